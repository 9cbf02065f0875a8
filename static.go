package main

import (
	"embed"
	"io/fs"
)

// web holds the browser client and the demo page served at "/".
//
//go:embed client/js/tether.js client/js/demo
var web embed.FS

// staticFS returns the files served at "/", rooted at client/js.
func staticFS() fs.FS {
	sub, err := fs.Sub(web, "client/js")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}
