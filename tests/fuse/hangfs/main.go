// hangfs is a FUSE file system for tests whose operations hang in the kernel the way a stuck network file system
// does: a caller blocks in open, stat or read until the test releases it.
//
// Usage: hangfs MOUNTPOINT NAME:MODE:SIZE...
//
// Every NAME is a regular file of SIZE bytes in the root, with the content byte i = (i*7919) % 251. MODE says
// which operation blocks while the file system is held: ok (none), open, stat (getattr and so lookup) or read.
// It mounts with mount(2) itself (as root; no fusermount), prints "ready" once mounted, and then
// "blocked OP NAME" each time an operation starts to wait. Commands on stdin, one a line: "release" lets every
// waiting and later operation through, "hang" holds them again (the state at start). End of stdin, SIGTERM or
// SIGINT release everything and unmount.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// gate holds operations until it is opened. A closed channel lets every waiter through at once.
type gate struct {
	mu   sync.Mutex
	open chan struct{}
	out  sync.Mutex
}

func (g *gate) current() chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *gate) hang() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default:
	}
}

func (g *gate) say(line string) {
	g.out.Lock()
	defer g.out.Unlock()
	fmt.Fprintln(os.Stdout, line)
}

// wait blocks until the gate opens or the kernel interrupts the request (the caller got a signal).
func (g *gate) wait(ctx context.Context, op, name string) syscall.Errno {
	open := g.current()
	select {
	case <-open:
		return 0
	default:
	}
	g.say("blocked " + op + " " + name)
	select {
	case <-open:
		return 0
	case <-ctx.Done():
		return syscall.EINTR
	}
}

type file struct {
	fs.Inode
	name string
	mode string
	size int
	gate *gate
}

var (
	_ fs.NodeGetattrer = (*file)(nil)
	_ fs.NodeOpener    = (*file)(nil)
	_ fs.NodeReader    = (*file)(nil)
)

func (f *file) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f.mode == "stat" {
		if e := f.gate.wait(ctx, "stat", f.name); e != 0 {
			return e
		}
	}
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(f.size)
	out.Nlink = 1
	// A fixed time, so the agent's ETag stays the same across runs of one test.
	out.Mtime = 1700000000
	return 0
}

func (f *file) Open(ctx context.Context, _ uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.mode == "open" {
		if e := f.gate.wait(ctx, "open", f.name); e != 0 {
			return nil, 0, e
		}
	}
	// Direct I/O: every read reaches this server, never the page cache, so a held file blocks every time.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *file) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if f.mode == "read" {
		if e := f.gate.wait(ctx, "read", f.name); e != 0 {
			return nil, e
		}
	}
	n := 0
	for i := int(off); i < f.size && n < len(dest); i++ {
		dest[n] = byte((i * 7919) % 251)
		n++
	}
	return fuse.ReadResultData(dest[:n]), 0
}

type root struct {
	fs.Inode
	files []*file
}

func (r *root) OnAdd(ctx context.Context) {
	for i, f := range r.files {
		child := r.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i + 2)})
		r.AddChild(f.name, child, false)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hangfs MOUNTPOINT NAME:MODE:SIZE...")
		os.Exit(2)
	}
	g := &gate{open: make(chan struct{})}
	r := &root{}
	for _, spec := range os.Args[2:] {
		parts := strings.Split(spec, ":")
		size, err := strconv.Atoi(parts[len(parts)-1])
		if len(parts) != 3 || err != nil || size < 0 || strings.Contains(parts[0], "/") {
			fmt.Fprintf(os.Stderr, "hangfs: bad file %q: want NAME:MODE:SIZE\n", spec)
			os.Exit(2)
		}
		switch parts[1] {
		case "ok", "open", "stat", "read":
		default:
			fmt.Fprintf(os.Stderr, "hangfs: bad mode %q: want ok, open, stat or read\n", parts[1])
			os.Exit(2)
		}
		r.files = append(r.files, &file{name: parts[0], mode: parts[1], size: size, gate: g})
	}
	// No caching of names or attributes: a held stat must reach this server every time.
	zero := time.Duration(0)
	server, err := fs.Mount(os.Args[1], r, &fs.Options{
		EntryTimeout: &zero,
		AttrTimeout:  &zero,
		MountOptions: fuse.MountOptions{DirectMountStrict: true, FsName: "hangfs", Name: "hangfs"},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "hangfs: cannot mount %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	g.say("ready")

	stop := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(stop) }) }
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		end()
	}()
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			switch strings.TrimSpace(lines.Text()) {
			case "release":
				g.release()
				g.say("released")
			case "hang":
				g.hang()
				g.say("holding")
			}
		}
		end()
	}()
	// The kernel ends the session when someone else unmounts (a lazy unmount by the test): then Wait returns.
	go func() {
		server.Wait()
		end()
	}()
	<-stop
	g.release()
	if err := server.Unmount(); err != nil {
		fmt.Fprintf(os.Stderr, "hangfs: unmount: %v\n", err)
	}
}
