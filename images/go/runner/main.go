// Command run builds a Go playground program read from stdin and runs it, as the Go playground
// does: a txtar archive of several files and packages, test mode, error texts and positions as
// the playground's, the faketime build. It is the image's /usr/lib/compilerd/run.
//
// Before the program runs, the runner writes one record on stdout (record, below) saying whether
// the build failed and whether this is a test run; the daemon reads it from the start of stdout,
// where nothing of the program can come before it.
//
// A single prog.go in package main with a func main, importing only the standard library, is
// compiled and linked directly (no go command: it costs about 0.3 s more); anything else goes
// through the go command, with the standard library precompiled for faketime (-pkgdir).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const (
	goroot    = "/usr/lib/go-1.19"
	tools     = goroot + "/pkg/tool/linux_amd64"
	pkgdir    = "/usr/lib/compilerd/go-faketime"
	importcfg = "/usr/lib/compilerd/importcfg"
	// The multi-file build's directory; its path is cut from the build's messages.
	workDir    = "/tmp/play"
	progBinary = "/tmp/prog"
	// The image's modules, read-only, and the proxy the go command asks for them (the cache's
	// download directory has a proxy's layout).
	modCache = "/usr/lib/compilerd/gomodcache"
	proxyDir = modCache + "/cache/download"
)

// record is what the daemon learns of the build: Errors, as the Go playground's answer has it
// (non-empty: the build failed and nothing runs), IsTest, and vet's findings when it was asked
// for (Vetted).
type record struct {
	Errors    string
	IsTest    bool
	Vetted    bool
	VetErrors string
}

// vetMarker leads the program when the request asked for vet (the daemon adds it; a NUL byte
// cannot be part of Go source).
const vetMarker = "\x00vet\n"

// writeRecord: "\0\0CD", the JSON's length (4 bytes, big-endian), the JSON.
func writeRecord(r record) {
	body, _ := json.Marshal(r)
	buf := append([]byte("\x00\x00CD"), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(buf[4:], uint32(len(body)))
	os.Stdout.Write(append(buf, body...))
}

// failBuild ends a run whose program does not build: status 2, as the compile commands had.
func failBuild(msg string) {
	writeRecord(record{Errors: msg})
	os.Exit(2)
}

func main() {
	src, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the program:", err)
		os.Exit(2)
	}
	vet := bytes.HasPrefix(src, []byte(vetMarker))
	src = bytes.TrimPrefix(src, []byte(vetMarker))
	files, err := splitFiles(src)
	if err != nil {
		failBuild(err.Error())
	}
	if len(files) == 0 {
		files = []file{{progName, src}}
	}
	for _, f := range files {
		if strings.Contains(f.name, "/") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f.name, f.data, parser.PackageClauseOnly)
		if err == nil && parsed.Name.Name != "main" {
			failBuild("package name must be main")
		}
	}
	var prog []byte
	for _, f := range files {
		if f.name == progName {
			prog = f.data
		}
	}
	test := isTestProg(prog)
	if !vet && !test && len(files) == 1 && files[0].name == progName && stdOnly(prog) {
		runSingle(prog)
	}
	runPackage(files, test, vet)
}

// stdOnly says whether every import of the program is a package of the precompiled standard
// library (a parse error counts as yes: the compiler reports it as go build would).
func stdOnly(src []byte) bool {
	f, err := parser.ParseFile(token.NewFileSet(), progName, src, parser.ImportsOnly)
	if err != nil {
		return true
	}
	cfg, err := os.ReadFile(importcfg)
	if err != nil {
		return false
	}
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil || !bytes.Contains(cfg, []byte("packagefile "+p+"=")) {
			return false
		}
	}
	return true
}

// toolEnv: the compiler and linker are short-lived and collect less (GOGC=400), but no less once
// near the run's memory limit (GOMEMLIMIT, soft); their threads count against the run's process
// limit, whatever the host's core count.
func toolEnv() []string {
	return append(os.Environ(), "GOROOT="+goroot, "GOGC=400", "GOMEMLIMIT=64MiB", "GOMAXPROCS=2")
}

func runSingle(prog []byte) {
	if err := os.WriteFile("/tmp/prog.go", prog, 0o644); err != nil {
		failBuild(err.Error())
	}
	steps := [][]string{
		{tools + "/compile", "-o", "prog.a", "-p", "main", "-complete", "-nolocalimports", "-pack", "-importcfg", importcfg, "prog.go"},
		// -s -w: no symbol table, no DWARF, which nothing in the sandbox reads.
		{tools + "/link", "-o", "prog", "-s", "-w", "-buildmode=exe", "-importcfg", importcfg, "prog.a"},
	}
	for _, argv := range steps {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = "/tmp"
		cmd.Env = toolEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			// The go command names the files of the main package ./prog.go.
			msg := string(out)
			if strings.HasPrefix(msg, progName+":") {
				msg = "./" + msg
			}
			failBuild(strings.ReplaceAll(msg, "\n"+progName+":", "\n./"+progName+":"))
		}
	}
	os.Remove("/tmp/prog.a")
	start(progBinary, record{})
}

func runPackage(files []file, test, vet bool) {
	hasMod := false
	for _, f := range files {
		name := f.name
		if name == progName && test {
			name = "prog_test.go"
		}
		if name == "go.mod" {
			hasMod = true
		}
		p := filepath.Join(workDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			failBuild(err.Error())
		}
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			failBuild(err.Error())
		}
	}
	if !hasMod {
		if err := os.WriteFile(filepath.Join(workDir, "go.mod"), []byte("module play\n"), 0o644); err != nil {
			failBuild(err.Error())
		}
	}
	args := []string{"build", "-o", progBinary}
	if test {
		args = []string{"test", "-c", "-o", progBinary}
	}
	if out, err := goCommand(args...); err != nil {
		failBuild(cleanBuildOutput(string(out)))
	}
	r := record{IsTest: test}
	if vet {
		// After a build that worked, before the run, as the Go playground does; what it finds
		// is reported, the program runs anyway.
		r.Vetted = true
		if out, err := goCommand("vet"); err != nil {
			r.VetErrors = cleanBuildOutput(string(out))
		}
	}
	os.RemoveAll("/tmp/gocache")
	start(progBinary, r)
}

// goCommand runs `go <args> -tags=faketime -pkgdir=… -mod=mod .` in the build directory, offline,
// with the standard library precompiled for faketime.
func goCommand(args ...string) ([]byte, error) {
	args = append(args, "-tags=faketime", "-pkgdir="+pkgdir, "-mod=mod", ".")
	cmd := exec.Command(goroot+"/bin/go", args...)
	cmd.Dir = workDir
	cmd.Env = []string{
		"PATH=/usr/bin:/bin", "HOME=/tmp", "GOROOT=" + goroot, "GOCACHE=/tmp/gocache",
		"GOPATH=/tmp/gopath", "CGO_ENABLED=0", "GO111MODULE=on", "GOPROXY=" + goproxy(),
		// One compile at a time: two of a large package (golang.org/x/text) at once pass the
		// run's memory limit.
		"GOMODCACHE=" + modCache, "GOSUMDB=off", "GOFLAGS=-p=1", "GOMAXPROCS=2", "GOGC=400", "GOMEMLIMIT=64MiB",
	}
	return cmd.CombinedOutput()
}

// goproxy: the image's modules (scripts/build-image.sh makes them from Debian's golang-*-dev
// packages), then nothing: any other module fails with the go command's offline error.
func goproxy() string {
	if _, err := os.Stat(proxyDir); err == nil {
		return "file://" + proxyDir + ",off"
	}
	return "off"
}

// cleanBuildOutput makes the go command's messages the Go playground's: no build directory, no
// first package banner.
func cleanBuildOutput(out string) string {
	out = strings.ReplaceAll(out, workDir+"/", "")
	out = strings.Replace(out, "# command-line-arguments\n", "", 1)
	if strings.HasPrefix(out, "#") {
		if i := strings.IndexByte(out, '\n'); i >= 0 {
			out = out[i+1:]
		}
	}
	return out
}

// start tells the daemon the build is done, then becomes the program.
func start(path string, r record) {
	writeRecord(r)
	argv := []string{path}
	if r.IsTest {
		argv = append(argv, "-test.v")
	}
	os.Chdir("/tmp")
	err := syscall.Exec(path, argv, os.Environ())
	fmt.Fprintln(os.Stderr, "starting the program:", err)
	os.Exit(2)
}
