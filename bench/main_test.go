package bench

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lesismal/nbio/logging"
)

// TestMain lets the test binary serve as a bench worker: the coordinator
// starts workers as `<own executable> bench worker`, which under `go test`
// is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) >= 3 && os.Args[1] == "bench" && os.Args[2] == "worker" {
		os.Exit(Main(os.Args[2:]))
	}
	logging.SetLevel(logging.LevelNone)
	code := m.Run()
	if builtBin != "" {
		_ = os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}
