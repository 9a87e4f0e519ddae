// Command modproxy turns Go module sources unpacked from Debian's golang-*-dev packages into a
// module proxy on disk (GOPROXY=file://DIR), so that playground programs can import them without
// network. It reads "ROOT VERSION" lines on stdin (ROOT: a directory holding a go.mod) and writes,
// for each, DIR/<module>/@v/{list,VERSION.info,VERSION.mod,VERSION.zip} and @latest, then prints
// "MODULE@VERSION" per module served.
//
// A module's own requirements are dropped from the go.mod it is served with: only the modules of
// the set exist offline, and a package that needs one of them resolves it from this proxy; one
// that needs another fails as any unknown module does.
package main

import (
	"archive/zip"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: modproxy DIR < roots")
		os.Exit(2)
	}
	out := os.Args[1]
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 2 {
			continue
		}
		mod, err := serve(out, fields[0], fields[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "modproxy: %s: %v\n", fields[0], err)
			os.Exit(1)
		}
		fmt.Printf("%s@%s\n", mod, fields[1])
	}
}

func serve(out, root, version string) (string, error) {
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	mod, goLine := "", ""
	for _, l := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "module" {
			mod = strings.Trim(f[1], `"`)
		}
		if len(f) == 2 && f[0] == "go" {
			goLine = l + "\n"
		}
	}
	if mod == "" {
		return "", fmt.Errorf("no module line in go.mod")
	}
	served := []byte("module " + mod + "\n\n" + goLine)
	dir := filepath.Join(out, escape(mod), "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	info, _ := json.Marshal(map[string]string{"Version": version, "Time": stamp(version)})
	pseudo := strings.Count(version, "-") >= 2
	list := ""
	if !pseudo {
		list = version + "\n"
	}
	files := map[string][]byte{
		"list":            []byte(list),
		version + ".info": info,
		version + ".mod":  served,
		"../@latest":      info,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return "", err
		}
	}
	return mod, writeZip(filepath.Join(dir, version+".zip"), root, mod+"@"+version, served)
}

// writeZip: every regular file of the module, under "MODULE@VERSION/", without nested modules
// (directories with their own go.mod), vendor directories or VCS data.
func writeZip(path, root, prefix string, gomod []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	z := zip.NewWriter(f)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel != "." && (d.Name() == "vendor" || d.Name() == ".git" || exists(filepath.Join(p, "go.mod"))) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		w, err := z.Create(prefix + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if rel == "go.mod" {
			_, err = w.Write(gomod)
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(w, src)
		return err
	})
	if err != nil {
		return err
	}
	return z.Close()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// escape: the proxy protocol's case encoding, an upper-case letter is "!" and its lower case.
func escape(mod string) string {
	var b strings.Builder
	for _, r := range mod {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// stamp: a pseudo-version's own time, else the epoch of Go modules' time field.
func stamp(version string) string {
	parts := strings.Split(version, "-")
	if len(parts) >= 3 {
		if t, err := time.Parse("20060102150405", parts[len(parts)-2]); err == nil {
			return t.UTC().Format(time.RFC3339)
		}
	}
	return time.Unix(0, 0).UTC().Format(time.RFC3339)
}
