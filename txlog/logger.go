package txlog

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// pebbleLogger routes Pebble's log output to a zerolog logger.
type pebbleLogger struct {
	log zerolog.Logger
}

var _ pebble.Logger = pebbleLogger{}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Info().Msgf(format, args...)
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error().Msgf(format, args...)
}

// Fatalf must not return: Pebble calls it on unrecoverable corruption.
// zerolog exits the process after logging unless zerolog.FatalExitFunc
// returns, in which case we panic.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Fatal().Msgf(format, args...)
	panic(fmt.Sprintf(format, args...))
}
