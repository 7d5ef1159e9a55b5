//go:build race

package caddyaffinity

const raceDetector = true
