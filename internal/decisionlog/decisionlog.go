// Package decisionlog logs the policies' per-request decisions without a
// per-request cost when the log level leaves them out.
package decisionlog

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Message is the message of every decision entry.
const Message = "affinity decision"

// Logger logs decisions: routine ones at debug level, notable ones (a
// client moved to another upstream) at info. It asks the logger's core
// which levels are on once, when it is made: a policy makes it at
// Provision, and Caddy's log levels are fixed for a config's life (a
// reload provisions new modules). Asking zap on every request cost a
// measurable share of the selection in profiles of a loaded Caddy. A
// logger whose level can change later (a zap.AtomicLevel) needs a new
// Logger to follow the change.
type Logger struct {
	l           *zap.Logger
	debug, info bool
}

// New returns a Logger writing to l (zap.NewNop if nil).
func New(l *zap.Logger) Logger {
	if l == nil {
		l = zap.NewNop()
	}
	c := l.Core()
	return Logger{l: l, debug: c.Enabled(zapcore.DebugLevel), info: c.Enabled(zapcore.InfoLevel)}
}

// Enabled reports whether a decision is logged; notable raises it from
// debug to info level. Small enough to inline, so a request whose
// decision is not logged pays for no call.
func (d Logger) Enabled(notable bool) bool { return d.debug || notable && d.info }

// Check returns the entry to write a decision to, or nil if it is not
// logged. notable raises it from debug to info level.
func (d Logger) Check(notable bool) *zapcore.CheckedEntry {
	switch {
	case notable && d.info:
		return d.l.Check(zapcore.InfoLevel, Message)
	case d.debug:
		return d.l.Check(zapcore.DebugLevel, Message)
	}
	return nil
}
