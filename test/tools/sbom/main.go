// Command sbom writes an SPDX 2.3 JSON document for Go binaries, from the
// module list the Go toolchain stamps into each: the main module, every
// module linked in and the standard library, each with its version and
// package URL. make release attaches it to the image as a signed
// attestation (cosign attest --type spdxjson).
//
// Usage: go run ./test/tools/sbom -name NAME BINARY... > sbom.spdx.json
package main

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

type document struct {
	SPDXVersion       string         `json:"spdxVersion"`
	DataLicense       string         `json:"dataLicense"`
	SPDXID            string         `json:"SPDXID"`
	Name              string         `json:"name"`
	DocumentNamespace string         `json:"documentNamespace"`
	CreationInfo      creationInfo   `json:"creationInfo"`
	Packages          []pkg          `json:"packages"`
	Relationships     []relationship `json:"relationships"`
}

type creationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type pkg struct {
	SPDXID           string        `json:"SPDXID"`
	Name             string        `json:"name"`
	VersionInfo      string        `json:"versionInfo"`
	DownloadLocation string        `json:"downloadLocation"`
	FilesAnalyzed    bool          `json:"filesAnalyzed"`
	LicenseConcluded string        `json:"licenseConcluded"`
	LicenseDeclared  string        `json:"licenseDeclared"`
	CopyrightText    string        `json:"copyrightText"`
	Checksums        []checksum    `json:"checksums,omitempty"`
	ExternalRefs     []externalRef `json:"externalRefs"`
}

type checksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

type externalRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type relationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

func main() {
	name := flag.String("name", "", "the document's name (the released artifact, with its version)")
	version := flag.String("version", "", "the main module's version (its build stamp says (devel) when built from a checkout)")
	license := flag.String("license", "Apache-2.0", "the main module's declared license")
	flag.Parse()
	if *name == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: sbom -name NAME [-version V] BINARY...")
		os.Exit(2)
	}
	doc, err := build(*name, *version, *license, flag.Args(), created())
	if err == nil {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(doc)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sbom: %v\n", err)
		os.Exit(1)
	}
}

// created is $SOURCE_DATE_EPOCH (reproducible builds), else now.
func created() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Now().UTC()
}

var notID = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

func id(kind, name, version string) string {
	return "SPDXRef-" + kind + "-" + strings.Trim(notID.ReplaceAllString(name+"-"+version, "-"), "-")
}

func build(name, version, license string, binaries []string, at time.Time) (*document, error) {
	doc := &document{SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT", Name: name,
		CreationInfo: creationInfo{Created: at.Format(time.RFC3339), Creators: []string{"Tool: microscaling-sbom"}}}
	seen := map[string]bool{}
	add := func(p pkg) {
		if !seen[p.SPDXID] {
			seen[p.SPDXID] = true
			doc.Packages = append(doc.Packages, p)
		}
	}
	sums := sha256.New()
	for _, bin := range binaries {
		f, err := os.Open(bin)
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(io.MultiWriter(h, sums), f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", bin, err)
		}
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			return nil, fmt.Errorf("%s: no Go build information: %w", bin, err)
		}
		v := info.Main.Version
		if version != "" {
			v = version
		}
		main := pkg{SPDXID: id("Binary", info.Path, v), Name: info.Path, VersionInfo: v, DownloadLocation: "NOASSERTION",
			LicenseConcluded: "NOASSERTION", LicenseDeclared: license, CopyrightText: "NOASSERTION",
			Checksums:    []checksum{{"SHA256", hex.EncodeToString(h.Sum(nil))}},
			ExternalRefs: []externalRef{{"PACKAGE-MANAGER", "purl", purl(info.Main.Path, v)}}}
		add(main)
		doc.Relationships = append(doc.Relationships, relationship{"SPDXRef-DOCUMENT", "DESCRIBES", main.SPDXID})
		std := pkg{SPDXID: id("Package", "stdlib", info.GoVersion), Name: "stdlib", VersionInfo: info.GoVersion,
			DownloadLocation: "https://go.dev/dl/", LicenseConcluded: "NOASSERTION", LicenseDeclared: "BSD-3-Clause", CopyrightText: "NOASSERTION",
			ExternalRefs: []externalRef{{"PACKAGE-MANAGER", "purl", "pkg:golang/stdlib@" + info.GoVersion}}}
		add(std)
		doc.Relationships = append(doc.Relationships, relationship{main.SPDXID, "DEPENDS_ON", std.SPDXID})
		for _, d := range info.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			p := pkg{SPDXID: id("Package", d.Path, d.Version), Name: d.Path, VersionInfo: d.Version,
				DownloadLocation: "https://proxy.golang.org/" + escape(d.Path) + "/@v/" + escape(d.Version) + ".zip",
				LicenseConcluded: "NOASSERTION", LicenseDeclared: "NOASSERTION", CopyrightText: "NOASSERTION",
				ExternalRefs: []externalRef{{"PACKAGE-MANAGER", "purl", purl(d.Path, d.Version)}}}
			add(p)
			doc.Relationships = append(doc.Relationships, relationship{main.SPDXID, "DEPENDS_ON", p.SPDXID})
		}
	}
	slices.SortStableFunc(doc.Packages[1:], func(a, b pkg) int { return strings.Compare(a.SPDXID, b.SPDXID) })
	doc.DocumentNamespace = "https://microscaling.com/spdx/" + notID.ReplaceAllString(name, "-") + "-" + hex.EncodeToString(sums.Sum(nil))[:16]
	return doc, nil
}

// purl is a Go module's package URL (pkg:golang/PATH@VERSION).
func purl(path, version string) string {
	return "pkg:golang/" + path + "@" + strings.ReplaceAll(version, "+", "%2B")
}

// escape is the module proxy's case-encoding: an upper-case letter is "!"
// and its lower case.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
