//go:build race

package main

// raceDetector tells tests whether they run under -race, where every call is several times slower.
const raceDetector = true
