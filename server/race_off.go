//go:build !race

package server

import "github.com/lesismal/nbio"

// addRaceEdges and raceEdge do nothing outside race builds (see race_on.go).
func addRaceEdges(*nbio.Engine) {}

func raceEdge() {}
