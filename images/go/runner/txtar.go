package main

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"
)

// A file of the submitted program, in submission order.
type file struct {
	name string
	data []byte
}

const progName = "prog.go"

// splitFiles reads the program as a txtar archive, with the Go playground's limits, name rules
// and error texts; text before the first marker is prog.go unless it is blank.
func splitFiles(src []byte) ([]file, error) {
	comment, archived := parseTxtar(src)
	var files []file
	if len(bytes.TrimSpace(comment)) > 0 {
		files = append(files, file{progName, comment})
	}
	const maxFiles = 20
	if n := len(files) + len(archived); n > maxFiles {
		return nil, fmt.Errorf("too many files in txtar archive (%v exceeds limit of %v)", n, maxFiles)
	}
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.name] = true
	}
	for _, f := range archived {
		if len(f.name) > 200 {
			return nil, errors.New("file name too long")
		}
		if strings.IndexFunc(f.name, func(r rune) bool { return r < 0x20 || r == '\\' }) != -1 {
			return nil, fmt.Errorf("invalid file name %q", f.name)
		}
		if f.name != path.Clean(f.name) || path.IsAbs(f.name) {
			return nil, fmt.Errorf("invalid file name %q", f.name)
		}
		parts := strings.Split(f.name, "/")
		if len(parts) > 10 {
			return nil, fmt.Errorf("file name %q too deep", f.name)
		}
		for _, p := range parts {
			if p == "." || p == ".." {
				return nil, fmt.Errorf("invalid file name %q", f.name)
			}
		}
		if seen[f.name] {
			return nil, fmt.Errorf("duplicate file name %q", f.name)
		}
		seen[f.name] = true
		files = append(files, f)
	}
	return files, nil
}

// parseTxtar splits the archive: a marker line is "-- NAME --" at the start of a line; the last
// piece gets a final newline if it lacks one.
func parseTxtar(data []byte) (comment []byte, files []file) {
	var name string
	comment, name, data = nextMarker(data)
	for name != "" {
		f := file{name: name}
		f.data, name, data = nextMarker(data)
		files = append(files, f)
	}
	return comment, files
}

func nextMarker(data []byte) (before []byte, name string, after []byte) {
	i := 0
	for {
		if name, after = marker(data[i:]); name != "" {
			return data[:i], name, after
		}
		j := bytes.Index(data[i:], []byte("\n-- "))
		if j < 0 {
			if len(data) > 0 && data[len(data)-1] != '\n' {
				data = append(data[:len(data):len(data)], '\n')
			}
			return data, "", nil
		}
		i += j + 1
	}
}

func marker(data []byte) (name string, after []byte) {
	if !bytes.HasPrefix(data, []byte("-- ")) {
		return "", nil
	}
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		data, after = data[:i], data[i+1:]
	}
	data = bytes.TrimRight(data, "\r")
	if !(bytes.HasSuffix(data, []byte(" --")) && len(data) >= len("-- --")) {
		return "", nil
	}
	return strings.TrimSpace(string(data[3 : len(data)-3])), after
}
