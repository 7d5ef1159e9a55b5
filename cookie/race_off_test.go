//go:build !race

package cookie

// raceDetector says whether the test binary runs with -race, where
// allocation counts are meaningless.
const raceDetector = false
