package decisionlog

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestCheckFollowsLevel(t *testing.T) {
	for _, tc := range []struct {
		level            zapcore.Level
		routine, notable zapcore.Level // -99: not logged
	}{
		{zapcore.DebugLevel, zapcore.DebugLevel, zapcore.InfoLevel},
		{zapcore.InfoLevel, -99, zapcore.InfoLevel},
		{zapcore.ErrorLevel, -99, -99},
	} {
		core, logs := observer.New(tc.level)
		d := New(zap.New(core))
		for _, notable := range []bool{false, true} {
			want := tc.routine
			if notable {
				want = tc.notable
			}
			c := d.Check(notable)
			if (c != nil) != (want != -99) {
				t.Fatalf("level %v, notable %v: entry %v, want logged %v", tc.level, notable, c != nil, want != -99)
			}
			if c == nil {
				continue
			}
			c.Write(zap.String("k", "v"))
			got := logs.TakeAll()
			if len(got) != 1 || got[0].Level != want || got[0].Message != Message {
				t.Fatalf("level %v, notable %v: logged %+v, want one %v entry", tc.level, notable, got, want)
			}
		}
	}
}

func TestNilLogger(t *testing.T) {
	if New(nil).Check(true) != nil {
		t.Fatal("a nil logger logs nothing")
	}
}
