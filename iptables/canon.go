package iptables

import (
	"slices"
	"strconv"
	"strings"
)

// This file compares rules as nodeproxy writes them with rules as iptables-save prints them,
// so that a full sync can leave alone every chain the kernel already holds exactly (after a
// restart, nearly all of them): iptables-save reorders a rule (addresses and protocol first),
// spells addresses with their prefix length, prints the probability with other digits and adds
// the default options of some extensions. canonicalRule maps both spellings of the rules the
// builder writes to one string. It only needs to be exact for that vocabulary: when the two
// disagree for any reason the chain is simply written again.

// ruleToken is one word of a rule; quoted words (comments) are never options.
type ruleToken struct {
	text   string
	quoted bool
}

// tokenizeRule splits a rule spec into words, honouring double quotes and the backslash
// escapes iptables-save writes inside them.
func tokenizeRule(spec string) []ruleToken {
	out := make([]ruleToken, 0, 24)
	for i := 0; i < len(spec); {
		switch spec[i] {
		case ' ':
			i++
		case '"':
			end := i + 1
			for end < len(spec) && spec[end] != '"' {
				if spec[end] == '\\' {
					end++
				}
				end++
			}
			text := spec[i+1 : min(end, len(spec))]
			if strings.IndexByte(text, '\\') >= 0 {
				text = unescape(text)
			}
			out = append(out, ruleToken{text: text, quoted: true})
			i = end + 1
		default:
			j := strings.IndexByte(spec[i:], ' ')
			if j < 0 {
				j = len(spec) - i
			}
			out = append(out, ruleToken{text: spec[i : i+j]})
			i += j
		}
	}
	return out
}

// unescape drops the backslashes of backslash escapes.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ruleModule is one match (-m) or the target (-j) of a rule with its options.
type ruleModule struct {
	name string
	opts []string
}

// isGeneric reports whether an option belongs to no extension; iptables-save prints these
// first, whatever their place in the rule.
func isGeneric(opt string) bool {
	switch opt {
	case "-s", "-d", "-p", "-i", "-o":
		return true
	}
	return false
}

// canonicalRule returns the canonical form of a rule spec (the text after "-A CHAIN ").
func canonicalRule(spec string) string {
	toks := tokenizeRule(spec)
	var generic []string
	modules := make([]ruleModule, 0, 6)
	negate := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case !t.quoted && t.text == "!":
			negate = true
			continue
		case !t.quoted && (t.text == "-m" || t.text == "-j") && i+1 < len(toks):
			modules = append(modules, ruleModule{name: t.text + " " + toks[i+1].text})
			i++
		case !t.quoted && isGeneric(t.text) && i+1 < len(toks):
			generic = append(generic, option(negate, t.text, canonicalValue(toks[i+1].text)))
			i++
		default:
			var value string
			for i+1 < len(toks) && (toks[i+1].quoted || !isOption(toks[i+1].text)) {
				i++
				if value != "" {
					value += " "
				}
				value += canonicalValue(toks[i].text)
			}
			opt := option(negate, t.text, value)
			if n := len(modules); n > 0 {
				modules[n-1].opts = append(modules[n-1].opts, opt)
			} else {
				generic = append(generic, opt)
			}
		}
		negate = false
	}
	slices.Sort(generic)
	var b strings.Builder
	b.Grow(len(spec) + 32)
	for _, g := range generic {
		b.WriteString(g)
		b.WriteByte(' ')
	}
	for _, m := range modules {
		m.write(&b)
	}
	return strings.TrimSuffix(b.String(), " ")
}

// option renders one option with its (possibly empty) value.
func option(negate bool, name, value string) string {
	prefix := ""
	if negate {
		prefix = "! "
	}
	if value == "" {
		return prefix + name
	}
	return prefix + name + " " + value
}

// isOption reports whether a word starts an option (or negates one).
func isOption(word string) bool { return word == "!" || strings.HasPrefix(word, "-") }

// write renders the module with its options sorted, defaults dropped and the MARK target's
// shorthands spelled as --set-xmark, followed by a space.
func (m ruleModule) write(b *strings.Builder) {
	opts := m.opts[:0]
	for _, o := range m.opts {
		switch m.name {
		case "-m recent":
			if o == "--rsource" || o == "--mask 255.255.255.255" || o == "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" {
				continue
			}
		case "-j REJECT":
			if o == "--reject-with icmp-port-unreachable" || o == "--reject-with icmp6-port-unreachable" {
				continue
			}
		case "-j MARK":
			o = canonicalMark(o)
		}
		opts = append(opts, o)
	}
	if len(opts) > 1 {
		slices.Sort(opts)
	}
	b.WriteString(m.name)
	b.WriteByte(' ')
	for _, o := range opts {
		b.WriteString(o)
		b.WriteByte(' ')
	}
}

// canonicalMark spells the MARK target's --or-mark and --xor-mark as the --set-xmark that
// iptables-save prints for them.
func canonicalMark(opt string) string {
	name, value, _ := strings.Cut(opt, " ")
	switch name {
	case "--or-mark":
		return "--set-xmark " + value + "/" + value
	case "--xor-mark":
		return "--set-xmark " + value + "/0x0"
	}
	return opt
}

// canonicalValue normalizes one option value: hexadecimal numbers (also in "value/mask"),
// decimal fractions (the statistic probability, which the kernel stores in 32 bits) and
// host prefixes (/32, /128), which iptables-save adds to addresses.
func canonicalValue(v string) string {
	v = strings.TrimSuffix(strings.TrimSuffix(v, "/32"), "/128")
	if strings.HasPrefix(v, "0x") {
		parts := strings.Split(v, "/")
		for i, p := range parts {
			if n, err := strconv.ParseUint(strings.TrimPrefix(p, "0x"), 16, 32); err == nil {
				parts[i] = "0x" + strconv.FormatUint(n, 16)
			}
		}
		return strings.Join(parts, "/")
	}
	if strings.HasPrefix(v, "0.") {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return strconv.FormatFloat(f, 'f', 6, 64)
		}
	}
	return v
}

// savedChains are the chains of one table as iptables-save printed them: each chain's rules
// in canonical form (a chain without rules maps to an empty slice).
type savedChains map[string][]string

// parseSave reads the chains of the first table in iptables-save output.
func parseSave(save []byte) savedChains {
	out := savedChains{}
	for line := range strings.Lines(string(save)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := out[name]; !ok {
				out[name] = []string{}
			}
		case strings.HasPrefix(line, "-A "):
			name, spec, _ := strings.Cut(line[len("-A "):], " ")
			out[name] = append(out[name], canonicalRule(spec))
		}
	}
	return out
}

// holds reports whether the table holds chain with exactly these rules (specs as the
// builder writes them).
func (s savedChains) holds(chain string, rules []string) bool {
	have, ok := s[chain]
	if !ok || len(have) != len(rules) {
		return false
	}
	for i, r := range rules {
		if have[i] != canonicalRule(r) {
			return false
		}
	}
	return true
}

// hasJump reports whether the table holds a rule in chain from that jumps to to.
func (s savedChains) hasJump(from, to string) bool {
	target := "-j " + to
	for _, r := range s[from] {
		if r == target || strings.HasSuffix(r, " "+target) {
			return true
		}
	}
	return false
}
