//go:build unix

package main

// datadir_unix.go is DATA_DIR's owner check on Unix, where owners and modes guard files.

import (
	"io/fs"
	"syscall"
)

// fileOwner returns the uid that owns the file fi describes, and whether owners and modes are what
// guards files here, as they are on Unix.
func fileOwner(fi fs.FileInfo) (uid int, guarded bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1, false
	}
	return int(st.Uid), true
}
