package main

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"strings"
	"unicode"
	"unicode/utf8"
)

// isTestProg says whether prog.go is run as tests: package main without a func main, with a
// test, fuzz target, TestMain or an example. Benchmarks alone do not count.
func isTestProg(src []byte) bool {
	if len(src) == 0 {
		return false
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, progName, src, parser.ParseComments)
	if err != nil || f.Name.Name != "main" {
		return false
	}
	found := false
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil {
			continue
		}
		name := fn.Name.Name
		if name == "main" {
			return false
		}
		if name == "TestMain" || (isTestName(name, "Test") || isTestName(name, "Fuzz")) && takesOne(fn) {
			found = true
		}
	}
	return found || len(doc.Examples(f)) > 0
}

// takesOne: one parameter of type *T, *F or *M (bare or qualified, e.g. *testing.T) and no
// results.
func takesOne(fn *ast.FuncDecl) bool {
	t := fn.Type
	if t.Results != nil && len(t.Results.List) > 0 {
		return false
	}
	if t.Params == nil || len(t.Params.List) != 1 || len(t.Params.List[0].Names) > 1 {
		return false
	}
	star, ok := t.Params.List[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	name := ""
	switch x := star.X.(type) {
	case *ast.Ident:
		name = x.Name
	case *ast.SelectorExpr:
		name = x.Sel.Name
	}
	return name == "T" || name == "F" || name == "M"
}

// isTestName: the prefix alone, or followed by a rune that is not lower-case (Testimony is not a
// test).
func isTestName(name, prefix string) bool {
	if !strings.HasPrefix(name, prefix) {
		return false
	}
	if len(name) == len(prefix) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(name[len(prefix):])
	return !unicode.IsLower(r)
}
