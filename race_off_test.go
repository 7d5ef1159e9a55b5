//go:build !race

package caddyaffinity

// raceDetector says whether the test binary runs with -race, where
// allocation counts are meaningless.
const raceDetector = false
