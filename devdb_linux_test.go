package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// connectAs tries to connect to the Unix socket at path with the file-system identity of uid (and
// gid), as a process of that user would, and returns the error connect gave.
//
// Linux checks a path's permissions against the calling thread's fsuid, and setting it to a
// non-zero uid also drops the capabilities, CAP_DAC_OVERRIDE among them, by which root passes
// those checks. The attempt runs on a locked thread that its goroutine never unlocks, so that the
// runtime ends the thread, and the changed identity with it, when the goroutine returns.
func connectAs(uid int, path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		errc <- func() error {
			if err := syscall.Setfsgid(uid); err != nil {
				return err
			}
			if err := syscall.Setfsuid(uid); err != nil {
				return err
			}
			// setfsuid reports no failure; read back what the kernel now uses.
			if fsuid, err := threadFSUID(); err != nil || fsuid != uid {
				return fmt.Errorf("the thread's fsuid is %d (%v), not %d", fsuid, err, uid)
			}
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			return syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		}()
	}()
	return <-errc
}

// threadFSUID is the calling thread's file-system uid, the fourth figure of its Uid line.
func threadFSUID() (int, error) {
	f, err := os.Open("/proc/thread-self/status")
	if err != nil {
		return -1, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if ids, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			var real, eff, saved, fs int
			_, err := fmt.Sscan(ids, &real, &eff, &saved, &fs)
			return fs, err
		}
	}
	return -1, errors.New("no Uid line")
}

// openDir is a directory of the test's own that every user may pass through, as a home directory
// often is, so that only what the service creates inside it can keep others out.
func openDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "open-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func TestNoOtherUserCanConnectToTheDevelopmentDatabase(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skipf("runs as uid %d, not root, so it cannot take another user's identity to try the socket; "+
			"TestTheDevelopmentDatabaseListensOnASocketInAPrivateDirectory still checks that its directory is 0700", os.Geteuid())
	}
	t.Run("another user can connect where permissions let them, so the check below can fail", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(openDir(t), "open.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := os.Chmod(path, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := connectAs(otherUID, path); err != nil {
			t.Fatalf("uid %d connecting to an open socket: %v", otherUID, err)
		}
	})
	for _, tt := range []struct{ name, dataDir string }{
		{"in DATA_DIR", "data"},
		{"in a temporary directory, for a long DATA_DIR", strings.Repeat("d", 100)},
	} {
		t.Run("no other user can connect to its socket "+tt.name, func(t *testing.T) {
			t.Parallel()
			dev := startTestDevDB(t, filepath.Join(openDir(t), tt.dataDir))
			// Open the socket itself to everyone, as a umask of 0 would leave it: only its
			// directory may stand in the way.
			if err := os.Chmod(dev.socket, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := connectAs(0, dev.socket); err != nil {
				t.Fatalf("the service's own user cannot connect: %v", err)
			}
			if err := connectAs(otherUID, dev.socket); !errors.Is(err, syscall.EACCES) {
				t.Fatalf("uid %d connecting to %s: %v; want EACCES", otherUID, dev.socket, err)
			}
		})
	}
}

// listeningTCP returns this process's listening TCP sockets, by inode, with their local address
// as /proc writes it.
func listeningTCP(tb testing.TB) map[string]string {
	tb.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	mine := make(map[string]bool)
	for _, fd := range fds {
		link, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())) // it may have closed since
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			mine[strings.TrimSuffix(inode, "]")] = true
		}
	}
	found := make(map[string]string)
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			tb.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ... inode; state 0A is LISTEN.
			if f := strings.Fields(line); len(f) > 9 && f[3] == "0A" && mine[f[9]] {
				found[f[9]] = f[1]
			}
		}
	}
	return found
}

// Not parallel: it compares the process's TCP listeners before and after, and the other tests'
// servers would come and go in between; Go runs parallel tests only once the others are done.
func TestTheDevelopmentDatabaseOpensNoTCPPort(t *testing.T) {
	before := listeningTCP(t)
	dev := startTestDevDB(t, newDataDir(t))
	roundTrip(t, dev.uri)
	for inode, addr := range listeningTCP(t) {
		if _, ok := before[inode]; !ok {
			t.Errorf("a TCP listener on %s (hex, as /proc writes it) appeared with the development database", addr)
		}
	}
}
