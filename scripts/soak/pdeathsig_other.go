//go:build !linux

package main

import "os/exec"

// killWithParent: only Linux can tie a child's life to its parent's; elsewhere a soak that is
// killed outright (not interrupted) leaves its children running.
func killWithParent(cmd *exec.Cmd) {}
