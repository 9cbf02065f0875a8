//go:build !race

package server

import "github.com/lesismal/nbio/nbhttp"

// addRaceEdges does nothing outside race builds (see race_on.go).
func addRaceEdges(*nbhttp.Engine) {}
