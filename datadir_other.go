//go:build !unix

package main

// datadir_other.go is DATA_DIR's owner check where file modes guard nothing (Windows).

import "io/fs"

// fileOwner reports that owners and modes do not guard files here: Windows decides with access
// control lists, which a file's mode does not show, so DATA_DIR and its secret go unchecked there.
func fileOwner(fs.FileInfo) (uid int, guarded bool) { return -1, false }
