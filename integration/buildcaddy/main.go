// Command buildcaddy builds Caddy with caddy-affinity from this checkout
// through xcaddy's Go package: `go run ./integration/buildcaddy -o bin/caddy`.
package main

import (
	"context"
	"flag"
	"log"

	"github.com/caddy-affinity/caddy-affinity/integration"
)

func main() {
	out := flag.String("o", "bin/caddy", "output file")
	flag.Parse()
	if err := integration.BuildCaddy(context.Background(), *out); err != nil {
		log.Fatal(err)
	}
}
