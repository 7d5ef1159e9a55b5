//go:build race

package testutil

// RaceEnabled says whether the binary runs with -race, where allocation
// counts mean nothing and sync.Pool drops items on purpose.
const RaceEnabled = true
