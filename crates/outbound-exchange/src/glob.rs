//! Host-pattern globs for outbound routes (CONTRACT §4).
//!
//! # Syntax
//!
//! A pattern is matched against the *whole* normalized host (see [`normalize_host`]);
//! `.` is the separator.
//!
//! | syntax      | matches                                                                 |
//! |-------------|-------------------------------------------------------------------------|
//! | `*`         | any run (possibly empty) of characters without a `.`                    |
//! | `**`        | any run (possibly empty) of characters, dots included                   |
//! | `?`         | exactly one character that is not a `.`                                 |
//! | `[abc]`     | one character of the set; ranges `[a-z]`; negation `[!x]` or `[^x]`     |
//! | `{a,b,..}`  | any of the alternatives; alternatives may hold globs, braces may nest   |
//! | `\c`        | the character `c` literally (`\*`, `\?`, `\[`, `\{`, `\}`, `\,`, `\\`)  |
//! | anything else | itself                                                                |
//!
//! Details and choices:
//!
//! * Matching is case-insensitive: the pattern is lower-cased when it is parsed and hosts are
//!   lower-cased by [`normalize_host`] (the matcher additionally folds ASCII upper case in the
//!   host, so an un-normalized host still matches the same way). In a class, single characters
//!   are lower-cased and a range matches a host character if it contains the character or its
//!   ASCII upper-case form, so `[A-F]` and `[a-f]` are the same class.
//! * `:` is an ordinary character, so IPv6 literals work: `fe80::*`, `::1`.
//! * `**.example.com` does **not** match `example.com`: the dot is literal. Write
//!   `{,**.}example.com` (an empty alternative is allowed) to match both.
//! * A class never matches `.`, not even a negated one (`[!a]` does not match `.`). Writing `.`
//!   explicitly in a class (`[.-]`, `[.-z]`) is an error, since it could never take effect. A
//!   range that merely spans `.` (`[+-/]`) is allowed; it still never matches `.`.
//! * In a class, `]` ends the class unless escaped (`[\]]`), so `[]` and `[!]` are "empty class"
//!   errors. `-` is literal as the first or last item. A range compares code points as written:
//!   `[z-a]` (and `[a-Z]`) is a "reversed range" error.
//! * A `,` outside braces is a literal comma. A `}` outside braces is an error ("unmatched
//!   `}`"); escape it as `\}`. `{}` is an error; `{a}` is the same as `a`. Braces nest up to 8
//!   deep and a pattern may expand to at most 64 alternatives (duplicates are merged).
//! * Three or more consecutive `*` are an error (ambiguous). `\` followed by nothing is an
//!   error. Whitespace and control characters are errors (they can never be in a host and
//!   usually come from a YAML quoting mistake). The empty pattern is an error.
//! * One trailing `.` on the pattern (on each alternative, after brace expansion) is ignored,
//!   like the trailing dot of the host: `kubernetes.default.svc.` matches
//!   `kubernetes.default.svc`.
//! * Each alternative may hold at most 255 elements (characters, classes, wildcards).
//!
//! Errors carry the pattern, the byte offset of the offending character in the pattern as
//! written (the opening `[`/`{` for unterminated groups) and a reason.
//!
//! # Algorithm
//!
//! [`HostPattern::parse`] parses the pattern into a small tree, expands the braces into at most
//! 64 alternatives and compiles each alternative into a token list (`Lit(c)`, `Any`, `Class`,
//! `Star`, `DoubleStar`; runs of stars are collapsed). Each alternative keeps its literal
//! prefix and suffix as strings, so a host is first checked with two slice comparisons (the
//! common `*.svc.cluster.local` and `name**` shapes are then decided without an automaton: the
//! remaining middle is just `*` or `**`).
//!
//! Otherwise the middle is matched by simulating the Thompson NFA whose states are the token
//! positions: the set of live states is a fixed-size bitset (`[u64; 4]` on the stack, since an
//! alternative has at most 255 tokens), each host character advances every live state once and
//! the epsilon moves of the stars are applied with a shift-and-mask. Matching therefore takes
//! `O(host length × tokens)` time in the worst case, never backtracks (no exponential blow-up
//! for `*a*a*a*b`-style patterns) and allocates nothing.
//!
//! [`HostPattern::subsumes`] decides language inclusion exactly: it runs the subset
//! construction of both patterns in lock-step over a finite set of representative characters
//! (the input alphabet is partitioned into classes of characters that every token treats
//! alike) and fails as soon as a host accepted by `later` is rejected by `self`. The search is
//! bounded (4096 state pairs, 1024 tokens); if a bound is hit it answers `false`, so it never gives a
//! false positive. [`HostPattern::is_match_all`] is the same check against `**`, computed
//! once at parse time.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;

/// Maximum number of alternatives a pattern may expand to.
const MAX_EXPANSIONS: usize = 64;
/// Maximum number of tokens in one alternative.
const MAX_TOKENS: usize = 255;
/// Maximum brace nesting depth.
const MAX_NESTING: usize = 8;
/// Words of the fixed-size state bitset: states are `0..=MAX_TOKENS`.
const WORDS: usize = (MAX_TOKENS + 1).div_ceil(64);
/// Maximum number of state pairs explored by the inclusion check.
const SUBSUME_BUDGET: usize = 4096;
/// Patterns larger than this (both together, all alternatives) are not compared by the
/// inclusion check (it answers `false`), to bound its cost.
const SUBSUME_MAX_TOKENS: usize = 1024;

/// An invalid host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError {
    /// The pattern as written.
    pub pattern: String,
    /// Byte offset in `pattern` of the offending character.
    pub position: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid host pattern \"{}\" at byte {}: {}",
            self.pattern, self.position, self.reason
        )
    }
}

impl std::error::Error for GlobError {}

/// A character class; never matches `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Class {
    negated: bool,
    /// Lower-cased single characters.
    singles: Vec<char>,
    /// Inclusive ranges, as written.
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        if c == '.' {
            return false;
        }
        let upper = c.to_ascii_uppercase();
        let hit = self.singles.contains(&c)
            || self
                .ranges
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&c) || (lo..=hi).contains(&upper));
        hit != self.negated
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    /// One literal (lower-case) character.
    Lit(char),
    /// `?`
    Any,
    /// `[...]`
    Class(Box<Class>),
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// End of an alternative in the combined automaton used by `subsumes`; accepts nothing.
    End,
}

impl Token {
    fn is_star(&self) -> bool {
        matches!(self, Token::Star | Token::DoubleStar)
    }

    /// For a one-character token: whether it consumes `c`. For a star: whether it loops on `c`.
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Lit(l) => *l == c,
            Token::Any | Token::Star => c != '.',
            Token::Class(class) => class.matches(c),
            Token::DoubleStar => true,
            Token::End => false,
        }
    }
}

/// How the part of an alternative between its literal prefix and suffix is matched.
#[derive(Debug, Clone)]
enum Middle {
    /// The alternative is a literal host.
    Nothing,
    /// Just `*`.
    Star,
    /// Just `**`.
    DoubleStar,
    /// General case: NFA over `tokens[start..end]`.
    Nfa {
        start: usize,
        end: usize,
        /// Bit `i` set when middle token `i` is a star.
        star_mask: [u64; WORDS],
        /// Epsilon closure of state 0.
        initial: [u64; WORDS],
    },
}

/// One alternative after brace expansion.
#[derive(Debug, Clone)]
struct Alt {
    /// The full token list (used by `subsumes`).
    tokens: Vec<Token>,
    prefix: String,
    suffix: String,
    middle: Middle,
}

impl Alt {
    fn new(tokens: Vec<Token>) -> Alt {
        let lead = tokens
            .iter()
            .take_while(|t| matches!(t, Token::Lit(_)))
            .count();
        let trail = if lead == tokens.len() {
            0
        } else {
            tokens
                .iter()
                .rev()
                .take_while(|t| matches!(t, Token::Lit(_)))
                .count()
        };
        let lit = |ts: &[Token]| -> String {
            ts.iter()
                .map(|t| match t {
                    Token::Lit(c) => *c,
                    _ => unreachable!("prefix and suffix hold only literals"),
                })
                .collect()
        };
        let prefix = lit(&tokens[..lead]);
        let suffix = lit(&tokens[tokens.len() - trail..]);
        let (start, end) = (lead, tokens.len() - trail);
        let middle = match &tokens[start..end] {
            [] => Middle::Nothing,
            [Token::Star] => Middle::Star,
            [Token::DoubleStar] => Middle::DoubleStar,
            mid => {
                let mut star_mask = [0u64; WORDS];
                for (i, t) in mid.iter().enumerate() {
                    if t.is_star() {
                        set_bit(&mut star_mask, i);
                    }
                }
                let mut initial = [0u64; WORDS];
                set_bit(&mut initial, 0);
                close(&star_mask, &mut initial);
                Middle::Nfa {
                    start,
                    end,
                    star_mask,
                    initial,
                }
            }
        };
        Alt {
            tokens,
            prefix,
            suffix,
            middle,
        }
    }

    fn is_match_all(&self) -> bool {
        self.prefix.is_empty()
            && self.suffix.is_empty()
            && matches!(self.middle, Middle::DoubleStar)
    }

    fn matches(&self, host: &str) -> bool {
        let h = host.as_bytes();
        let p = self.prefix.as_bytes();
        let s = self.suffix.as_bytes();
        if h.len() < p.len() + s.len() {
            return false;
        }
        if let Middle::Nothing = self.middle {
            return h.len() == p.len() && h.eq_ignore_ascii_case(p);
        }
        if !h[..p.len()].eq_ignore_ascii_case(p) || !h[h.len() - s.len()..].eq_ignore_ascii_case(s)
        {
            return false;
        }
        // The prefix and suffix are valid UTF-8 and matched byte for byte (modulo ASCII
        // case), so these are char boundaries; `get` keeps it panic-free regardless.
        let Some(mid) = host.get(p.len()..h.len() - s.len()) else {
            return false;
        };
        match &self.middle {
            Middle::Nothing => unreachable!("handled above"),
            Middle::Star => !mid.contains('.'),
            Middle::DoubleStar => true,
            Middle::Nfa {
                start,
                end,
                star_mask,
                initial,
            } => run_nfa(&self.tokens[*start..*end], star_mask, initial, mid),
        }
    }
}

fn set_bit(set: &mut [u64], i: usize) {
    set[i / 64] |= 1 << (i % 64);
}

fn get_bit(set: &[u64], i: usize) -> bool {
    (set[i / 64] >> (i % 64)) & 1 == 1
}

fn intersects(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).any(|(x, y)| x & y != 0)
}

/// Adds the epsilon moves of the stars (state `i` → `i + 1` for a star at `i`) until stable.
fn close(star_mask: &[u64], set: &mut [u64]) {
    loop {
        let mut changed = false;
        let mut carry = 0u64;
        for (word, &mask) in set.iter_mut().zip(star_mask) {
            let stars = *word & mask;
            let add = (stars << 1) | carry;
            carry = stars >> 63;
            if add & !*word != 0 {
                *word |= add;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Advances every live state of `cur` over `c` into `next` (before epsilon closure).
/// Returns whether any state is live afterwards.
fn step(tokens: &[Token], cur: &[u64], next: &mut [u64], c: char) -> bool {
    next.fill(0);
    let mut live = false;
    for (w, &word) in cur.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let i = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(token) = tokens.get(i) else {
                continue; // the accepting state of a single alternative
            };
            if token.accepts(c) {
                set_bit(next, if token.is_star() { i } else { i + 1 });
                live = true;
            }
        }
    }
    live
}

fn run_nfa(tokens: &[Token], star_mask: &[u64; WORDS], initial: &[u64; WORDS], text: &str) -> bool {
    let mut cur = *initial;
    let mut next = [0u64; WORDS];
    for c in text.chars() {
        if !step(tokens, &cur, &mut next, c.to_ascii_lowercase()) {
            return false;
        }
        close(star_mask, &mut next);
        std::mem::swap(&mut cur, &mut next);
    }
    get_bit(&cur, tokens.len())
}

/// A compiled host pattern.
#[derive(Debug, Clone)]
pub struct HostPattern {
    source: String,
    alts: Vec<Alt>,
    match_all: bool,
}

impl HostPattern {
    /// Parses and compiles `pattern` (see the module documentation for the syntax).
    pub fn parse(pattern: &str) -> Result<HostPattern, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError {
                pattern: String::new(),
                position: 0,
                reason: "empty pattern".into(),
            });
        }
        let mut parser = Parser {
            src: pattern,
            pos: 0,
            depth: 0,
        };
        let tree = parser.parse_seq(false)?;
        debug_assert_eq!(parser.pos, pattern.len());
        let expanded = expand(&tree, pattern)?;
        let mut seen = HashSet::new();
        let mut alts = Vec::with_capacity(expanded.len());
        for mut tokens in expanded {
            if tokens.last() == Some(&Token::Lit('.')) {
                tokens.pop();
            }
            let tokens = collapse_stars(tokens);
            if tokens.len() > MAX_TOKENS {
                return Err(GlobError {
                    pattern: pattern.to_owned(),
                    position: 0,
                    reason: format!(
                        "pattern too long (an alternative has more than {MAX_TOKENS} elements)"
                    ),
                });
            }
            if seen.insert(tokens.clone()) {
                alts.push(Alt::new(tokens));
            }
        }
        let mut compiled = HostPattern {
            source: pattern.to_owned(),
            alts,
            match_all: false,
        };
        compiled.match_all = compiled.alts.iter().any(Alt::is_match_all)
            // Cheap necessary conditions first: most patterns fail one of them.
            || (["", ".", "a", "a.b"].iter().all(|h| compiled.matches(h))
                && language_subset(
                    &Combined::new(&[Alt::new(vec![Token::DoubleStar])]),
                    &Combined::new(&compiled.alts),
                ));
        Ok(compiled)
    }

    /// Whether `normalized_host` (see [`normalize_host`]) matches the whole pattern.
    /// Allocation-free; linear in the host length times the pattern size.
    pub fn matches(&self, normalized_host: &str) -> bool {
        self.match_all || self.alts.iter().any(|alt| alt.matches(normalized_host))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches every host (`**`, `{**,x}`, `{*,*.**}`, ...).
    pub fn is_match_all(&self) -> bool {
        self.match_all
    }

    /// Whether every host matched by `later` is also matched by `self`, i.e. a route with
    /// pattern `later` placed after one with pattern `self` can never be selected.
    ///
    /// Exact up to a search bound; when the bound is reached the answer is `false`, so a
    /// `true` is always right.
    pub fn subsumes(&self, later: &HostPattern) -> bool {
        if self.match_all {
            return true;
        }
        // Every alternative of `later` is also one of ours.
        if later
            .alts
            .iter()
            .all(|l| self.alts.iter().any(|s| s.tokens == l.tokens))
        {
            return true;
        }
        // `later` is a finite set of literal hosts.
        if later
            .alts
            .iter()
            .all(|l| matches!(l.middle, Middle::Nothing))
        {
            return later.alts.iter().all(|l| self.matches(&l.prefix));
        }
        language_subset(&Combined::new(&later.alts), &Combined::new(&self.alts))
    }
}

/// Merges runs of stars: `*` `*` → `*`; a run holding a `**` → `**`.
fn collapse_stars(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if t.is_star() {
            if let Some(prev) = out.last_mut() {
                if prev.is_star() {
                    if t == Token::DoubleStar {
                        *prev = Token::DoubleStar;
                    }
                    continue;
                }
            }
        }
        out.push(t);
    }
    out
}

/// All alternatives of a pattern as one NFA: each alternative's tokens followed by `End`
/// (its accepting state).
struct Combined {
    tokens: Vec<Token>,
    star_mask: Vec<u64>,
    initial: Vec<u64>,
    accept: Vec<u64>,
}

impl Combined {
    fn new(alts: &[Alt]) -> Combined {
        let total: usize = alts.iter().map(|a| a.tokens.len() + 1).sum();
        let words = total.div_ceil(64).max(1);
        let mut tokens = Vec::with_capacity(total);
        let mut star_mask = vec![0u64; words];
        let mut initial = vec![0u64; words];
        let mut accept = vec![0u64; words];
        for alt in alts {
            set_bit(&mut initial, tokens.len());
            for t in &alt.tokens {
                if t.is_star() {
                    set_bit(&mut star_mask, tokens.len());
                }
                tokens.push(t.clone());
            }
            set_bit(&mut accept, tokens.len());
            tokens.push(Token::End);
        }
        close(&star_mask, &mut initial);
        Combined {
            tokens,
            star_mask,
            initial,
            accept,
        }
    }

    fn advance(&self, cur: &[u64], c: char) -> Option<Vec<u64>> {
        let mut next = vec![0u64; cur.len()];
        if !step(&self.tokens, cur, &mut next, c) {
            return None;
        }
        close(&self.star_mask, &mut next);
        Some(next)
    }
}

/// One character per class of characters that every token of `a` and `b` treats alike.
///
/// Host characters are ASCII-lower-cased before matching, so upper-case ASCII needs no
/// representative. Every ASCII character is tried; above ASCII a token's behaviour only
/// changes at its literal characters and range bounds, so the start of each such interval
/// represents it.
fn representatives(a: &Combined, b: &Combined) -> Vec<char> {
    let mut candidates: Vec<char> = (0u8..0x80)
        .filter(|b| !b.is_ascii_uppercase())
        .map(char::from)
        .collect();
    let mut bounds: Vec<u32> = vec![0x80, 0xE000];
    let point = |c: char, bounds: &mut Vec<u32>| {
        if !c.is_ascii() {
            bounds.push(c as u32);
            bounds.push(c as u32 + 1);
        }
    };
    for t in a.tokens.iter().chain(&b.tokens) {
        match t {
            Token::Lit(c) => point(*c, &mut bounds),
            Token::Class(class) => {
                for &c in &class.singles {
                    point(c, &mut bounds);
                }
                for &(lo, hi) in &class.ranges {
                    if !hi.is_ascii() {
                        bounds.push((lo as u32).max(0x80));
                        bounds.push(hi as u32 + 1);
                    }
                }
            }
            _ => {}
        }
    }
    candidates.extend(bounds.into_iter().filter_map(char::from_u32));
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|&c| {
            let signature: Vec<bool> = a
                .tokens
                .iter()
                .chain(&b.tokens)
                .map(|t| t.accepts(c))
                .collect();
            seen.insert(signature)
        })
        .collect()
}

/// Whether every string accepted by `a` is accepted by `b` (`false` when undecided within
/// [`SUBSUME_BUDGET`]).
fn language_subset(a: &Combined, b: &Combined) -> bool {
    if a.tokens.len() + b.tokens.len() > SUBSUME_MAX_TOKENS {
        return false;
    }
    let reps = representatives(a, b);
    let mut seen: HashSet<(Vec<u64>, Vec<u64>)> = HashSet::new();
    let mut queue = VecDeque::new();
    let first = (a.initial.clone(), b.initial.clone());
    seen.insert(first.clone());
    queue.push_back(first);
    while let Some((sa, sb)) = queue.pop_front() {
        if intersects(&sa, &a.accept) && !intersects(&sb, &b.accept) {
            return false;
        }
        for &c in &reps {
            let Some(na) = a.advance(&sa, c) else {
                continue;
            };
            let nb = b.advance(&sb, c).unwrap_or_else(|| vec![0; sb.len()]);
            let pair = (na, nb);
            if !seen.contains(&pair) {
                if seen.len() >= SUBSUME_BUDGET {
                    return false;
                }
                seen.insert(pair.clone());
                queue.push_back(pair);
            }
        }
    }
    true
}

/// Parse tree: tokens and brace groups.
enum Node {
    Tok(Token),
    Group { pos: usize, alts: Vec<Vec<Node>> },
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, position: usize, reason: impl Into<String>) -> GlobError {
        GlobError {
            pattern: self.src.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
        it.next();
        it.next()
    }

    fn check_char(&self, at: usize, c: char) -> Result<(), GlobError> {
        if c.is_whitespace() || c.is_control() {
            return Err(self.err(
                at,
                format!("{c:?} is not allowed in a host pattern (whitespace or control character)"),
            ));
        }
        Ok(())
    }

    fn push_lit(out: &mut Vec<Node>, c: char) {
        out.extend(c.to_lowercase().map(|l| Node::Tok(Token::Lit(l))));
    }

    /// Parses up to the end of the pattern, or (inside braces) up to an unescaped `,` or `}`.
    fn parse_seq(&mut self, in_group: bool) -> Result<Vec<Node>, GlobError> {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            let at = self.pos;
            match c {
                ',' | '}' if in_group => break,
                '}' => {
                    return Err(self.err(at, "unmatched '}' (write \\} for a literal brace)"));
                }
                '{' => {
                    self.pos += 1;
                    out.push(self.parse_group(at)?);
                }
                '*' => {
                    let run = self.src[at..].bytes().take_while(|&b| b == b'*').count();
                    if run > 2 {
                        return Err(self.err(
                            at,
                            "three or more consecutive '*' (use '*' within a label or '**' across labels)",
                        ));
                    }
                    self.pos += run;
                    out.push(Node::Tok(if run == 2 {
                        Token::DoubleStar
                    } else {
                        Token::Star
                    }));
                }
                '?' => {
                    self.pos += 1;
                    out.push(Node::Tok(Token::Any));
                }
                '[' => {
                    let class = self.parse_class()?;
                    out.push(Node::Tok(Token::Class(Box::new(class))));
                }
                '\\' => {
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err(at, "trailing '\\' escapes nothing"));
                    };
                    self.check_char(self.pos, e)?;
                    self.pos += e.len_utf8();
                    Self::push_lit(&mut out, e);
                }
                c => {
                    self.check_char(at, c)?;
                    self.pos += c.len_utf8();
                    Self::push_lit(&mut out, c);
                }
            }
        }
        Ok(out)
    }

    /// Parses the alternatives of a group; the `{` at `open` is already consumed.
    fn parse_group(&mut self, open: usize) -> Result<Node, GlobError> {
        if self.depth >= MAX_NESTING {
            return Err(self.err(open, format!("braces nested more than {MAX_NESTING} deep")));
        }
        self.depth += 1;
        let mut alts = Vec::new();
        loop {
            alts.push(self.parse_seq(true)?);
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err(open, "unterminated '{'")),
            }
        }
        self.depth -= 1;
        if alts.len() == 1 && alts[0].is_empty() {
            return Err(self.err(open, "empty '{}'"));
        }
        Ok(Node::Group { pos: open, alts })
    }

    /// Reads one class member character: `Ok(None)` for the closing `]`.
    fn class_char(&mut self, open: usize) -> Result<Option<(usize, char)>, GlobError> {
        let at = self.pos;
        let c = match self.peek() {
            None => return Err(self.err(open, "unterminated '['")),
            Some(']') => {
                self.pos += 1;
                return Ok(None);
            }
            Some('\\') => {
                self.pos += 1;
                match self.peek() {
                    None => return Err(self.err(at, "trailing '\\' escapes nothing")),
                    Some(e) => e,
                }
            }
            Some(c) => c,
        };
        self.check_char(self.pos, c)?;
        if c == '.' {
            return Err(self.err(
                at,
                "'.' in a character class (a class never matches the separator)",
            ));
        }
        self.pos += c.len_utf8();
        Ok(Some((at, c)))
    }

    fn parse_class(&mut self) -> Result<Class, GlobError> {
        let open = self.pos;
        self.pos += 1;
        let negated = matches!(self.peek(), Some('!' | '^'));
        if negated {
            self.pos += 1;
        }
        let mut class = Class {
            negated,
            singles: Vec::new(),
            ranges: Vec::new(),
        };
        let mut first = true;
        while let Some((at, lo)) = self.class_char(open)? {
            first = false;
            if self.peek() == Some('-') && !matches!(self.peek2(), None | Some(']')) {
                self.pos += 1;
                let Some((_, hi)) = self.class_char(open)? else {
                    unreachable!("checked that '-' is not followed by ']'")
                };
                if lo > hi {
                    return Err(self.err(at, format!("reversed range '{lo}-{hi}'")));
                }
                class.ranges.push((lo, hi));
            } else {
                let mut lower = lo.to_lowercase();
                let single = match (lower.next(), lower.next()) {
                    (Some(l), None) => l,
                    _ => lo,
                };
                class.singles.push(single);
            }
        }
        if first {
            return Err(self.err(open, "empty character class (write \\] for a literal ']')"));
        }
        Ok(class)
    }
}

/// Expands the brace groups of `seq` into token lists.
fn expand(seq: &[Node], pattern: &str) -> Result<Vec<Vec<Token>>, GlobError> {
    let too_many = |pos: usize| GlobError {
        pattern: pattern.to_owned(),
        position: pos,
        reason: format!("braces expand to more than {MAX_EXPANSIONS} alternatives"),
    };
    let mut acc: Vec<Vec<Token>> = vec![Vec::new()];
    for node in seq {
        match node {
            Node::Tok(t) => acc.iter_mut().for_each(|a| a.push(t.clone())),
            Node::Group { pos, alts } => {
                let mut options = Vec::new();
                for alt in alts {
                    options.extend(expand(alt, pattern)?);
                    if options.len() > MAX_EXPANSIONS {
                        return Err(too_many(*pos));
                    }
                }
                if acc.len() * options.len() > MAX_EXPANSIONS {
                    return Err(too_many(*pos));
                }
                acc = acc
                    .iter()
                    .flat_map(|head| {
                        options.iter().map(move |tail| {
                            let mut v = head.clone();
                            v.extend(tail.iter().cloned());
                            v
                        })
                    })
                    .collect();
            }
        }
    }
    Ok(acc)
}

/// Normalizes a host as written in a request (or by a user) for matching: strips IPv6
/// brackets and a port, then one trailing dot, and lower-cases it.
///
/// `"[::1]:8080"` → `"::1"`, `"Example.COM.:443"` → `"example.com"`, `"::1"` (a bare IPv6
/// address: more than one `:`) → `"::1"`, `"10.0.0.1:80"` → `"10.0.0.1"`. Borrows when no
/// lower-casing is needed.
pub fn normalize_host(input: &str) -> Cow<'_, str> {
    let mut host = input;
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            host = &rest[..end];
        }
    } else if let Some(colon) = host.find(':') {
        if !host[colon + 1..].contains(':') {
            host = &host[..colon];
        }
    }
    if let Some(stripped) = host.strip_suffix('.') {
        host = stripped;
    }
    if host.is_ascii() {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    } else {
        let lower = host.to_lowercase();
        if lower == host {
            Cow::Borrowed(host)
        } else {
            Cow::Owned(lower)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn m(pattern: &str, host: &str) -> bool {
        p(pattern).matches(&normalize_host(host))
    }

    #[test]
    fn case_table() {
        let table = include_str!("../../../tests/data/glob_cases.txt");
        let mut rows = 0;
        let mut failures = Vec::new();
        for (n, line) in table.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(
                cols.len(),
                3,
                "line {}: expected 3 tab-separated columns: {line:?}",
                n + 1
            );
            let expected = match cols[2] {
                "match" => true,
                "nomatch" => false,
                other => panic!("line {}: bad expectation {other:?}", n + 1),
            };
            let pattern =
                HostPattern::parse(cols[0]).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
            let host = normalize_host(cols[1]);
            if pattern.matches(&host) != expected {
                failures.push(format!(
                    "line {}: {:?} vs {:?} (normalized {:?}): expected {}",
                    n + 1,
                    cols[0],
                    cols[1],
                    host,
                    cols[2]
                ));
            }
            // The subset-construction machinery must agree with the matcher.
            if !host.is_empty() {
                let escaped: String = host
                    .chars()
                    .flat_map(|c| {
                        let special = "*?[]{},\\".contains(c);
                        special.then_some('\\').into_iter().chain([c])
                    })
                    .collect();
                if let (false, Ok(literal)) = (host.ends_with('.'), HostPattern::parse(&escaped)) {
                    assert!(literal
                        .alts
                        .iter()
                        .all(|a| matches!(a.middle, Middle::Nothing)));
                    let via_automaton = language_subset(
                        &Combined::new(&literal.alts),
                        &Combined::new(&pattern.alts),
                    );
                    if via_automaton != expected {
                        failures.push(format!("line {}: subset check disagrees", n + 1));
                    }
                }
            }
            rows += 1;
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(rows >= 150, "only {rows} rows");
    }

    #[test]
    fn kagenti_surprises() {
        assert!(!m("*.svc.cluster.local", "a.b.svc.cluster.local"));
        assert!(m("*.svc.cluster.local", "b.svc.cluster.local"));
        assert!(m(
            "github-tool-mcp**",
            "github-tool-mcp.ns.svc.cluster.local"
        ));
        assert!(m("github-tool-mcp**", "github-tool-mcp"));
        assert!(!m("**.example.com", "example.com"));
        assert!(m("{,**.}example.com", "example.com"));
        assert!(m("*", "localhost"));
        assert!(!m("*", "example.com"));
    }

    fn err(pattern: &str) -> GlobError {
        match HostPattern::parse(pattern) {
            Ok(_) => panic!("{pattern:?} should be rejected"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "empty pattern"),
            ("[abc", 0, "unterminated '['"),
            ("a.[b", 2, "unterminated '['"),
            ("a.[b-", 2, "unterminated '['"),
            ("{a,b", 0, "unterminated '{'"),
            ("x.{a,{b,c}", 2, "unterminated '{'"),
            ("[]", 0, "empty character class"),
            ("a[!]", 1, "empty character class"),
            ("a[^]b", 1, "empty character class"),
            ("abc\\", 3, "trailing '\\'"),
            ("[a\\", 2, "trailing '\\'"),
            ("***", 0, "three or more"),
            ("a.****.b", 2, "three or more"),
            ("[z-a]", 1, "reversed range"),
            ("x[a-Z]", 2, "reversed range"),
            ("a}", 1, "unmatched '}'"),
            ("{a}}", 3, "unmatched '}'"),
            ("{}", 0, "empty '{}'"),
            ("[.]", 1, "'.' in a character class"),
            ("[a-c.]", 4, "'.' in a character class"),
            ("[+-.]", 3, "'.' in a character class"),
            ("a b", 1, "not allowed"),
            (" example.com", 0, "not allowed"),
            ("example.com\n", 11, "not allowed"),
            ("{{{{{{{{{a}}}}}}}}}", 8, "nested"),
            ("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}", 30, "more than 64"),
        ];
        for &(pattern, position, reason) in cases {
            let e = err(pattern);
            assert_eq!(e.pattern, pattern);
            assert_eq!(e.position, position, "{pattern:?}: {e}");
            assert!(e.reason.contains(reason), "{pattern:?}: {e}");
        }
        // 64 expansions are fine.
        assert_eq!(p("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}").alts.len(), 64);
        // Eight levels of nesting are fine.
        assert!(p("{{{{{{{{a}}}}}}}}").matches("a"));
        // Too many tokens in one alternative.
        assert!(err(&"a".repeat(256)).reason.contains("too long"));
        assert!(p(&"a".repeat(255)).matches(&"a".repeat(255)));
        assert!(err(&"?".repeat(256)).reason.contains("too long"));
    }

    #[test]
    fn error_display() {
        let e = err("[abc");
        assert_eq!(
            e.to_string(),
            "invalid host pattern \"[abc\" at byte 0: unterminated '['"
        );
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn accepted_oddities() {
        // Escaped specials.
        assert!(p("a\\}b").matches("a}b"));
        assert!(p("\\{a,b\\}").matches("{a,b}"));
        assert!(p("a,b").matches("a,b"));
        assert!(err("[]]").reason.contains("empty character class"));
        assert!(p("[\\]]").matches("]"));
        assert!(p("[-a]").matches("-"));
        assert!(p("[a-]").matches("-"));
        assert!(p("[!-]").matches("a"));
        assert!(!p("[!-]").matches("-"));
        assert!(p("{a}").matches("a"));
        assert!(p("{,a}b").matches("b"));
        assert!(p("**{*}").is_match_all());
        assert!(p("{a.,b.}").matches("a"));
        // A range spanning '.' never matches '.'.
        assert!(p("a[+-/]b").matches("a-b"));
        assert!(!p("a[+-/]b").matches("a.b"));
        // Duplicates merged.
        assert_eq!(p("{a,a,A}").alts.len(), 1);
    }

    #[test]
    fn as_str_is_verbatim() {
        assert_eq!(p("*.Example.COM.").as_str(), "*.Example.COM.");
    }

    #[test]
    fn match_all() {
        for pat in [
            "**",
            "{**,x}",
            "*{**}",
            "{*,*.**}",
            "{**.,*}",
            "{x,**}.{,**}",
        ] {
            assert!(p(pat).is_match_all(), "{pat}");
            assert!(p(pat).matches("a.b.c"), "{pat}");
        }
        for pat in [
            "*", "**.**", "?**", "*.**", "**x", "{*,*.*}", "**.", "[!x]**",
        ] {
            // `**.` is `**` once the trailing dot is ignored.
            assert_eq!(p(pat).is_match_all(), pat == "**.", "{pat}");
        }
    }

    #[test]
    fn subsumes() {
        let yes: &[(&str, &str)] = &[
            ("**", "anything.goes"),
            ("{**,x}", "*.x"),
            ("*.x", "*.x"),
            ("a.x", "a.x"),
            ("*.x", "a.x"),
            ("*.x", "A.X"),
            ("**.x", "*.x"),
            ("**.x", "*.*.x"),
            ("**.x", "a.*.x"),
            ("foo**", "foo-*"),
            ("foo**", "foo.bar.**"),
            ("*", "localhost"),
            ("10.**", "10.*.*.*"),
            ("10.*.*.*", "10.0.0.[0-9]"),
            ("*.example.com", "{a,b,c}.example.com"),
            ("{a,b,c}.example.com", "{b,a}.example.com"),
            ("[a-z]*", "[a-c]*"),
            ("[!x]*", "[a-w]*"),
            ("?", "[a-z]"),
            ("*", "?*?"),
            ("**", "*"),
            ("{,**.}example.com", "**.example.com"),
            ("{,**.}example.com", "example.com"),
            ("*.*", "?.?"),
            ("{*,*.**}", "**"),
            ("fe80::*", "fe80::1"),
            ("*-mcp**", "github-tool-mcp**"),
            ("**mcp**", "*mcp*.**"),
            ("*é*", "é"),
            ("[à-ÿ]", "é"),
        ];
        for &(a, b) in yes {
            assert!(p(a).subsumes(&p(b)), "{a:?} should subsume {b:?}");
        }
        let no: &[(&str, &str)] = &[
            ("*.x", "**.x"),
            ("*.x", "*.*.x"),
            ("*.x", "x"),
            ("**.x", "x"),
            ("a.x", "*.x"),
            ("foo-*", "foo**"),
            ("foo*", "foo**"),
            ("*", "**"),
            ("*", "a.b"),
            ("?", "??"),
            ("[a-y]", "[a-z]"),
            ("[a-z]", "?"),
            ("[!x]", "?"),
            ("{a,b}.example.com", "*.example.com"),
            ("10.*.*.*", "10.**"),
            ("*.*", "*"),
            ("*é*", "*"),
            ("[à-ÿ]", "?"),
            ("a", "{a,b}"),
        ];
        for &(a, b) in no {
            assert!(!p(a).subsumes(&p(b)), "{a:?} should not subsume {b:?}");
        }
    }

    #[test]
    fn subsumes_is_never_wrong_on_samples() {
        // Cross-check `subsumes` against brute force on a small universe of hosts.
        let patterns = [
            "*", "**", "*.x", "**.x", "*.*.x", "a.x", "a**", "a*", "?", "??", "[ab]", "[!a]*",
            "{a,b}.x", "{,**.}x", "*a*", "a.**", "**a", "?.*", "{*,*.**}", "*.*",
        ];
        let alphabet = ['a', 'b', 'x', '.'];
        let mut hosts = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for h in &frontier {
                for c in alphabet {
                    next.push(format!("{h}{c}"));
                }
            }
            hosts.extend(next.iter().cloned());
            frontier = next;
        }
        for a in patterns {
            for b in patterns {
                let (pa, pb) = (p(a), p(b));
                if pa.subsumes(&pb) {
                    for h in &hosts {
                        assert!(
                            !pb.matches(h) || pa.matches(h),
                            "{a:?} claims to subsume {b:?} but {h:?} is a counterexample"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn normalize() {
        let cases = [
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
            ("[FE80::1]:443", "fe80::1"),
            ("::1", "::1"),
            ("FE80::ABCD", "fe80::abcd"),
            ("Example.COM.:443", "example.com"),
            ("example.com.", "example.com"),
            ("example.com..", "example.com."),
            ("example.com", "example.com"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("localhost:", "localhost"),
            ("LOCALHOST", "localhost"),
            ("[::ffff:10.0.0.1]:80", "::ffff:10.0.0.1"),
            ("", ""),
            (":80", ""),
            ("ÉCOLE.fr", "école.fr"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input), want, "{input:?}");
        }
        assert!(matches!(
            normalize_host("example.com:443"),
            Cow::Borrowed("example.com")
        ));
        assert!(matches!(normalize_host("[::1]:80"), Cow::Borrowed("::1")));
        assert!(matches!(normalize_host("école.fr"), Cow::Borrowed(_)));
        assert!(matches!(normalize_host("Example.com"), Cow::Owned(_)));
    }

    #[test]
    fn pathological_patterns_are_linear() {
        let host = "a".repeat(10_000);
        assert!(!p("*a*a*a*a*a*b").matches(&host));
        assert!(p("*a*a*a*a*a*").matches(&host));
        assert!(!p("**a**a**a**a**a**a**a**b").matches(&host));
        let dotted = vec!["a"; 5_000].join(".");
        assert!(!p("**a*a**a*a**a*b").matches(&dotted));
        assert!(p("**.a.*.a.**").matches(&dotted));
        let alternatives = "{*a,**a,*a*,a*}{*a,**a,*a*,a*}{*b,**b,*c}";
        assert!(!p(alternatives).matches(&dotted));
        // The inclusion check on nasty patterns terminates (answer within budget or false).
        let nasty = p("**a*?*?*?*?*?*?*?*?**");
        let _ = nasty.subsumes(&p("*?*?*?*?*?*?*?*?*?*?*?*?a**"));
    }

    #[test]
    fn unnormalized_host_still_folds_ascii_case() {
        assert!(p("*.example.com").matches("API.Example.COM"));
        assert!(p("[a-c]x").matches("Bx"));
    }

    #[test]
    fn clone_and_debug() {
        let a = p("{a,b}*.x");
        let b = a.clone();
        assert!(b.matches("a1.x"));
        assert!(!format!("{a:?}").is_empty());
    }
}
