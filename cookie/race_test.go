package cookie

func raceEnabled() bool { return raceDetector }
