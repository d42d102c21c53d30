package demo

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// ANSI styles, used only when the narrator has Color.
const (
	ansiReset = "\x1b[0m"
	ansiBold  = "\x1b[1m"
	ansiDim   = "\x1b[2m"
	ansiRed   = "\x1b[31m"
	ansiGreen = "\x1b[32m"
	ansiCyan  = "\x1b[36m"
)

// Text layout.
const (
	textWidth  = 96
	indent     = "      "
	labelWidth = 36
)

// Narrator writes the story for people: a step counter, the narration
// wrapped to the width of a terminal, the evidence as aligned label/value
// lines, and the outcome. Color adds ANSI styles (for terminals).
type Narrator struct {
	W     io.Writer
	Color bool
}

func (n *Narrator) style(code, s string) string {
	if !n.Color || s == "" {
		return s
	}
	return code + s + ansiReset
}

// Intro writes what runs where.
func (n *Narrator) Intro(addrs []Address) {
	fmt.Fprintln(n.W, n.style(ansiBold, "Postern demo: the whole zero-trust flow on this machine, in one process."))
	for _, a := range addrs {
		line := fmt.Sprintf("  %-18s %s", a.Name, a.URL)
		if a.Note != "" {
			line += "  " + n.style(ansiDim, a.Note)
		}
		fmt.Fprintln(n.W, line)
	}
	fmt.Fprintln(n.W)
}

// Step writes one step.
func (n *Narrator) Step(s Step) {
	counter := n.style(ansiBold+ansiCyan, fmt.Sprintf("[%d/%d]", s.Number, s.Of))
	fmt.Fprintf(n.W, "%s %s\n", counter, n.style(ansiBold, s.Title))
	for _, l := range wrap(s.Narration, textWidth-len(indent)) {
		fmt.Fprintln(n.W, indent+l)
	}
	for _, f := range s.Evidence {
		label := fmt.Sprintf("%-*s", labelWidth, f.Label)
		fmt.Fprintf(n.W, "%s  %s %s\n", indent, n.style(ansiDim, label), textValue(f.Value))
	}
	if s.OK {
		fmt.Fprintln(n.W, indent+n.style(ansiGreen, "✓ as expected"))
	} else {
		for _, p := range s.Problems {
			fmt.Fprintln(n.W, indent+n.style(ansiRed, "✗ "+p))
		}
	}
	fmt.Fprintln(n.W)
}

// Summary writes the closing line.
func (n *Narrator) Summary(steps []Step, elapsed time.Duration) {
	ok := 0
	for _, s := range steps {
		if s.OK {
			ok++
		}
	}
	line := fmt.Sprintf("%d of %d steps behaved as expected", ok, len(steps))
	if ok == len(steps) {
		line = n.style(ansiGreen+ansiBold, line)
	} else {
		line = n.style(ansiRed+ansiBold, line)
	}
	fmt.Fprintf(n.W, "%s (%s).\n", line, elapsed.Round(10*time.Millisecond))
}

// WriteJSON writes s as one line of JSON.
func WriteJSON(w io.Writer, s Step) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// textValue renders a value for people: an act chain as the services'
// names, newest first, joined by ←.
func textValue(v any) string {
	switch v := v.(type) {
	case []string:
		if len(v) == 0 {
			return "(none)"
		}
		names := make([]string, len(v))
		for i, id := range v {
			names[i] = shortName(id)
		}
		return strings.Join(names, " ← ")
	case string:
		if v == "" {
			return "(none)"
		}
		return v
	case bool:
		if v {
			return "yes"
		}
		return "no"
	default:
		return fmt.Sprint(v)
	}
}

// shortName turns spiffe://td/ns/shop/sa/<name> into <name>.
func shortName(id string) string {
	if i := strings.LastIndex(id, "/sa/"); strings.HasPrefix(id, "spiffe://") && i >= 0 {
		return id[i+len("/sa/"):]
	}
	return id
}

// wrap breaks s into lines of at most width bytes at spaces.
func wrap(s string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, w := range strings.Fields(s) {
		if cur.Len() > 0 && cur.Len()+1+len(w) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// Serve writes the commands to try while the demo keeps running.
func (n *Narrator) Serve(cmds []Command) {
	fmt.Fprintln(n.W)
	fmt.Fprintln(n.W, n.style(ansiBold, "Everything keeps running; press Ctrl-C to stop. Try, in another terminal:"))
	for _, c := range cmds {
		fmt.Fprintln(n.W)
		fmt.Fprintln(n.W, n.style(ansiDim, "# "+c.Comment))
		fmt.Fprintln(n.W, c.Line)
	}
	fmt.Fprintln(n.W)
}

// WriteServeJSON writes the addresses and commands of --serve as one line
// of JSON: {"serve": {"addresses": [...], "commands": [...]}}.
func WriteServeJSON(w io.Writer, addrs []Address, cmds []Command) error {
	b, err := json.Marshal(map[string]any{"serve": map[string]any{"addresses": addrs, "commands": cmds}})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
