package main

import (
	"os/exec"
	"syscall"
)

// killWithParent has the kernel kill cmd's process when the soak dies, however it dies, so that
// no instance or database outlives a soak that was killed.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
