//go:build race

package cookie

const raceDetector = true
