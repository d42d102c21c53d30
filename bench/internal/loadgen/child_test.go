//go:build linux

package loadgen

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestControl(t *testing.T) {
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	in := strings.Join([]string{
		"cpuprofile-stop", // nothing to stop
		"cpuprofile-start " + prof,
		"cpuprofile-start " + prof, // already running
		"cpuprofile-stop",
		"reboot",
	}, "\n") + "\n"
	var out bytes.Buffer
	Control(strings.NewReader(in), &out)
	want := `error: unexpected command "cpuprofile-stop"
ok
error: unexpected command "cpuprofile-start"
ok
error: unexpected command "reboot"
`
	if out.String() != want {
		t.Errorf("replies:\n%s\nwant:\n%s", out.String(), want)
	}
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("profile: %v", err)
	}
}

func TestAnnounce(t *testing.T) {
	var out bytes.Buffer
	if err := Announce(&out, struct {
		PID  int    `json:"pid"`
		Addr string `json:"addr"`
	}{7, "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), `{"pid":7,"addr":"127.0.0.1:1"}`+"\n"; got != want {
		t.Errorf("Announce wrote %q, want %q", got, want)
	}
	if err := Announce(&out, func() {}); err == nil {
		t.Error("no error for a value JSON cannot encode")
	}
}

func TestCopyDir(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	if err := os.WriteFile(filepath.Join(src, "a.yaml"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CopyDir(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "a.yaml")); err != nil || string(b) != "x" {
		t.Errorf("copy: %q, %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dst, "a.yaml")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode: %v, %v", st.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dst, "sub")); !os.IsNotExist(err) {
		t.Errorf("copied a directory: %v", err)
	}
	if err := CopyDir(filepath.Join(src, "missing"), dst); err == nil {
		t.Error("no error for a missing source")
	}
}
