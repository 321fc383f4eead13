package coordinator

import (
	"fmt"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
)

// raftLogger adapts zerolog to raft.Logger so raft's messages carry the
// node's structured context. Raft is chatty at Info about elections, which an
// operator wants; its Debug goes to Debug.
type raftLogger struct{ l zerolog.Logger }

var _ raft.Logger = raftLogger{}

func (r raftLogger) Debug(v ...any)                 { r.l.Debug().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(format string, v ...any) { r.l.Debug().Msgf(format, v...) }
func (r raftLogger) Info(v ...any)                  { r.l.Info().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Infof(format string, v ...any)  { r.l.Info().Msgf(format, v...) }
func (r raftLogger) Warning(v ...any)               { r.l.Warn().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(format string, v ...any) {
	r.l.Warn().Msgf(format, v...)
}
func (r raftLogger) Error(v ...any)                 { r.l.Error().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(format string, v ...any) { r.l.Error().Msgf(format, v...) }

// Fatal and Panic must not return: raft relies on that.
func (r raftLogger) Fatal(v ...any) {
	r.l.Error().Msg(fmt.Sprint(v...))
	panic(fmt.Sprint(v...))
}
func (r raftLogger) Fatalf(format string, v ...any) {
	r.l.Error().Msgf(format, v...)
	panic(fmt.Sprintf(format, v...))
}
func (r raftLogger) Panic(v ...any)                 { r.Fatal(v...) }
func (r raftLogger) Panicf(format string, v ...any) { r.Fatalf(format, v...) }
