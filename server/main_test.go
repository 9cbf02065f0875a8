package server

import (
	"os"
	"testing"

	"github.com/lesismal/nbio/logging"
)

func TestMain(m *testing.M) {
	logging.SetLevel(logging.LevelNone)
	os.Exit(m.Run())
}
