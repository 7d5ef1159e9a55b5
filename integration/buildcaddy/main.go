// Command buildcaddy builds Caddy with caddy-affinity from this checkout
// through xcaddy's Go package: `go run ./integration/buildcaddy -o bin/caddy`
// (-selecttimer adds make bench's instrument).
package main

import (
	"context"
	"flag"
	"log"

	"github.com/caddy-affinity/caddy-affinity/integration"
)

func main() {
	out := flag.String("o", "bin/caddy", "output file")
	timer := flag.Bool("selecttimer", false, "also build in bench/selecttimer, make bench's instrument")
	flag.Parse()
	var extra []string
	if *timer {
		extra = append(extra, "bench/selecttimer")
	}
	if err := integration.BuildCaddy(context.Background(), *out, extra...); err != nil {
		log.Fatal(err)
	}
}
