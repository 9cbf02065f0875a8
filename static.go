package main

import "io/fs"

func staticFS() fs.FS { return nil }
