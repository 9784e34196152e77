//! Answer extraction from model text, normalisation and Exact Match (EM).
//!
//! Every stop rule and every accuracy number in stopwise rests on one question: "is this
//! answer the gold answer?". A probe at a checkpoint decodes a few tokens after a suffix such
//! as `"\n\nFinal answer: "`; a finished trace ends with a full solution. Both are free text,
//! so this module turns text into a comparable answer in two steps:
//!
//! 1. [`extract`] finds the final answer in the text (`\boxed{..}`, `#### 42`,
//!    `Final answer: ..`, the leading number of a probe, ...);
//! 2. [`normalize`] maps an answer to a canonical string, so that [`exact_match`] is plain
//!    string equality against the normalised gold aliases.
//!
//! How answers compare depends on the [`Task`]:
//!
//! - [`Task::Text`] (NQ-open): SQuAD normalisation (lower case, no punctuation, no articles,
//!   single spaces), so `"The Eiffel Tower."` = `"eiffel tower"`.
//! - [`Task::Numeric`] (GSM8K): exact numeric equality, so `"$1,000"` = `"1000.00"` =
//!   `"1000 dollars"`, but `"12"` ≠ `"1.2"`.
//! - [`Task::Math`] (MATH): LaTeX clean-up plus exact rational equality of numeric parts, so
//!   `"\dfrac12"` = `"0.5"` and `"\left( 3, \frac{\pi}{2} \right)"` = `"(3,\frac{\pi}{2})"`.
//!
//! Numbers are compared as exact rationals (no float tolerance): `1/3` ≠ `0.33`. The
//! canonical form of a number is its shortest decimal when it has one (`0.5`, `1234.5`,
//! `-10`) and `p/q` in lowest terms otherwise (`1/3`). [`normalize`] is idempotent, so a
//! normalised answer can be stored and compared again later.
//!
//! [`is_hedging`] is Dynasor-CoT's certainty filter: a probe whose text hedges ("wait",
//! "hmm", ...) is not trusted even if its answer is consistent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a task's answers are extracted and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Short free-text answers (NQ-open): SQuAD normalisation.
    Text,
    /// A single number (GSM8K): numeric equivalence.
    Numeric,
    /// LaTeX answers (MATH): LaTeX clean-up plus numeric equivalence.
    Math,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Text => "text",
            Task::Numeric => "numeric",
            Task::Math => "math",
        })
    }
}

/// A task name that is not one of `text`, `numeric`, `math`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {0:?}: expected one of text, numeric, math")]
pub struct ParseTaskError(String);

impl FromStr for Task {
    type Err = ParseTaskError;

    /// Parses `text`, `numeric` or `math`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Task::Text),
            "numeric" => Ok(Task::Numeric),
            "math" => Ok(Task::Math),
            _ => Err(ParseTaskError(s.to_owned())),
        }
    }
}

/// Words and phrases that mark a hedging probe, matched by [`is_hedging`].
///
/// Dynasor-CoT (Fu et al., 2025) drops probe answers whose text contains
/// `wait`, `hold`, `but`, `okay`, `no` or `hmm`; this list keeps those that signal doubt in a
/// short probe and adds the usual self-correction markers of reasoning models. Two of
/// Dynasor's words are changed: bare `no` is left out because "No" is a legitimate answer to
/// a yes/no question, and `hold` becomes `hold on` so that "the tank can hold 5 litres" is
/// not a hedge. `?` matches anywhere: a probe that asks a question is not answering one.
pub const HEDGING_WORDS: &[&str] = &[
    "wait",
    "hmm",
    "hold on",
    "okay",
    "but",
    "however",
    "alternatively",
    "let me",
    "check",
    "recheck",
    "maybe",
    "perhaps",
    "not sure",
    "?",
];

/// The final answer of a GSM8K reference solution: the text after the last `#### `, trimmed.
///
/// `None` when the solution has no `#### ` line or nothing follows it.
pub fn gold_from_gsm8k_solution(solution: &str) -> Option<String> {
    let (_, answer) = solution.rsplit_once("#### ")?;
    let answer = answer.trim();
    (!answer.is_empty()).then(|| answer.to_owned())
}

/// The final answer in `text`, or an empty string when there is none.
///
/// The rules, in order (the first that applies wins):
///
/// 0. A line starting with `Question:`, `Q:` or `Problem:` after some content opens a new
///    few-shot example the model hallucinated (lm-eval's stop sequence); it and everything
///    after it are dropped, so its `Answer:` is not taken for ours.
/// 1. **Boxed**: the content of the last complete `\boxed{...}` or `\fbox{...}` (nested
///    braces and escaped `\{ \}` handled; `\boxed 5` accepted). An unclosed last box, as in a
///    truncated trace, falls back to the previous complete one.
/// 2. **Marker**: the text after the last of `#### ` before a number (not a `####` markdown
///    heading), `Final answer:` / `**Final Answer**:` /
///    `Final Answer` on its own line, `The answer is`, `answer is:`, `Answer:` (ASCII case
///    ignored, markdown bold tolerated). Then, per task:
///    - numeric: the first number after the marker (`"The answer is $1,000."` → `1,000`),
///      or `""` when there is none — a probe that says "Final answer: Let me think" has no
///      answer, and returning its words would make two such probes "agree";
///    - math: the first `$...$`, `$$...$$`, `\(...\)` or `\[...\]` span right after the marker,
///      else the rest of the line up to the end of the sentence;
///    - text: the rest of the line up to the end of the sentence.
/// 3. **No marker**. Text before a `}` that closes nothing is kept first: a probe that
///    continued a suffix ending in `\boxed{` (Dynasor-CoT's) writes `18}`. Then:
///    - numeric: a probe continues right after the suffix, so its text *starts* with the
///      answer (`"18. The robe needs..."`, `"$18$"`). When the text starts with a number
///      (after `$`, `*`, `(`, ...) and the rest of that first sentence has no other digit,
///      that number is the answer. Otherwise the **last** number of the text is, which is
///      the GSM8K convention for full solutions;
///    - math: as after a marker, from the start of the text;
///    - text: the first non-empty line, up to the end of the sentence.
///
/// "End of the sentence" is a newline, or `.`, `!` or `?` followed by white space or the end
/// of the text; for text answers, a period after a single letter, an abbreviation such as
/// `St` or `Dr`, or a dotted word (`U.S.`) does not end the sentence unless a capitalised
/// sentence opener follows (`It`, `The`, ...), so `"Answer: St. Louis."` gives `St. Louis`
/// and `"George V. It was..."` gives `George V`. The terminator itself is dropped (no trailing
/// period). Text answers are also freed of `\text{..}` wrappers, `$` and surrounding `**`.
///
/// Numbers are returned as written (`1,000`, `-5`, `3/4`, without `$`); [`normalize`] makes
/// them canonical.
pub fn extract(task: Task, text: &str) -> String {
    let text = before_next_example(text);
    if let Some(boxed) = last_boxed(text) {
        return match task {
            Task::Text => clean_text_answer(boxed),
            Task::Numeric | Task::Math => boxed.trim().to_owned(),
        };
    }
    if let Some(rest) = after_last_marker(text) {
        return match task {
            Task::Numeric => number_tokens(rest).into_iter().next().map(|n| n.text).unwrap_or_default(),
            Task::Math => math_answer(rest),
            Task::Text => clean_text_answer(first_sentence(rest, true)),
        };
    }
    let text = before_unmatched_close(text).unwrap_or(text);
    match task {
        Task::Numeric => leading_number(text).or_else(|| number_tokens(text).pop().map(|n| n.text)).unwrap_or_default(),
        Task::Math => math_answer(text),
        Task::Text => clean_text_answer(first_sentence(text, true)),
    }
}

/// Canonical form of an answer for comparison.
///
/// - **Text** (SQuAD's `normalize_answer`): lower case; remove punctuation (ASCII
///   punctuation as in SQuAD, plus Unicode general punctuation such as curly quotes and
///   dashes, so typographic variants match); remove the articles `a`, `an`, `the`; collapse
///   white space.
/// - **Math**: LaTeX clean-up, then exact numbers:
///   - removed: `$`, `\$`, `\(` `\)` `\[` `\]`, `\left` / `\right` (keeping the delimiter),
///     `\displaystyle`, spacing (`\!` `\,` `\;` `\:` `\quad` `~`), `%` and `\%`, degree marks
///     (`^\circ`, `^{\circ}`, `°`, `\degree`), all white space (a space is kept only where it
///     ends a command name: `\pi r`), and trailing periods;
///   - `\boxed{x}` / `\fbox{x}` → `x`; `\text{x}`, `\textbf`, `\mbox`, `\mathrm`, ... → `x`,
///     except that a text group right after a number and at the end of a term is a unit and
///     is dropped with its exponent (`15\mbox{ cm}^2` → `15`, `5.4 \text{ cents}` → `5.4`);
///   - `\dfrac`, `\tfrac`, `\cfrac` → `\frac`; one-token arguments get braces
///     (`\frac12` → `\frac{1}{2}`, `\sqrt2` → `\sqrt{2}`, `x^2` → `x^{2}`, `4210_5` →
///     `4210_{5}`); redundant outer braces go;
///   - `x = 5` → `5` when the left side is a single variable (a letter or a command, with an
///     optional subscript) and there is only one `=`;
///   - `1,000` → `1000` when the whole answer is a number with thousands separators
///     (`10,\!080` too), `(C)` → `C`, and an answer made only of ASCII letters is lower-cased
///     (`\text{Evelyn}` = `evelyn`);
///   - numbers: decimals lose trailing zeros everywhere (`2.50\pi` → `2.5\pi`), and each
///     part of the answer between delimiters (`,` `(` `)` `[` `]` `;` `&` `|` `=` `\\`
///     `\{` `\}` `\begin{..}` `\end{..}`) that is a number — a decimal, `a/b`,
///     `\frac{a}{b}`, or a mixed number `1\frac{4}{5}` — becomes its canonical exact form
///     (`0.5`, `1/3`), so `\left( \frac{3}{2}, -13 \right)` = `(1.5,-13)`.
/// - **Numeric**: the math normalisation; then, if the result is not a number but contains
///   exactly one number and no other digit (`1000dollars`, `25percent`), that number's
///   canonical form. Otherwise the math-normalised string, which will only match an equal
///   string.
///
/// `normalize(t, &normalize(t, x)) == normalize(t, x)` for every task and string.
pub fn normalize(task: Task, answer: &str) -> String {
    // Fast path for the common case of a plain integer, already canonical; replay and sweeps
    // normalise millions of probed answers.
    if task != Task::Text && is_canonical_integer(answer) {
        return answer.to_owned();
    }
    match task {
        Task::Text => normalize_text(answer),
        Task::Numeric => normalize_numeric(answer),
        Task::Math => normalize_math(answer),
    }
}

/// `0` or digits without a leading zero.
fn is_canonical_integer(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// True when the normalised prediction is non-empty and equals any normalised gold alias.
pub fn exact_match(task: Task, prediction: &str, gold: &[String]) -> bool {
    let p = normalize(task, prediction);
    !p.is_empty() && gold.iter().any(|g| normalize(task, g) == p)
}

/// True when the text hedges: it contains one of [`HEDGING_WORDS`], ignoring case.
///
/// Words match on word boundaries ("but" is not found in "button", "check" is found in
/// "double-check"); a word ending in a doubled letter also matches longer runs ("hmmm").
/// Curly apostrophes count as straight ones.
pub fn is_hedging(text: &str) -> bool {
    let lower = text.to_lowercase().replace('\u{2019}', "'");
    HEDGING_WORDS.iter().any(|word| contains_word(&lower, word))
}

/// Whether `word` occurs in `haystack` (both lower case) with word boundaries at the ends
/// that are alphanumeric.
fn contains_word(haystack: &str, word: &str) -> bool {
    let is_word_char = |c: char| c.is_alphanumeric();
    let last = word.chars().last();
    let doubled = {
        let mut rev = word.chars().rev();
        matches!((rev.next(), rev.next()), (Some(a), Some(b)) if a == b && a.is_alphabetic())
    };
    haystack.match_indices(word).any(|(pos, _)| {
        let before_ok =
            !word.starts_with(is_word_char) || !haystack[..pos].chars().next_back().is_some_and(is_word_char);
        let mut after = haystack[pos + word.len()..].chars().peekable();
        if doubled {
            while after.next_if(|&c| Some(c) == last).is_some() {}
        }
        let after_ok = !word.ends_with(is_word_char) || !after.peek().is_some_and(|&c| is_word_char(c));
        before_ok && after_ok
    })
}

// ---------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------

/// Abbreviations whose period does not end a sentence in a text answer.
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "Ft", "Gen", "Col", "Lt", "Sgt", "Capt", "Prof", "Rev", "Gov",
    "Sen", "Rep", "vs", "etc", "No",
];

/// The text before a line that starts a new few-shot example (see [`extract`], rule 0).
fn before_next_example(text: &str) -> &str {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let head = line.trim_start().trim_start_matches(['*', '#']).trim_start();
        let head = head.get(..9).unwrap_or(head).to_ascii_lowercase();
        let opens_example = head.starts_with("question:") || head.starts_with("q:") || head.starts_with("problem:");
        if opens_example && !text[..line_start].trim().is_empty() {
            return &text[..line_start];
        }
        line_start += line.len();
    }
    text
}

/// The content of the last complete `\boxed{..}` / `\fbox{..}` in `text`.
fn last_boxed(text: &str) -> Option<&str> {
    ["\\boxed", "\\fbox"]
        .iter()
        .flat_map(|name| {
            text.match_indices(name)
                .filter_map(|(pos, _)| boxed_argument(&text[pos + name.len()..]).map(|arg| (pos, arg)))
        })
        .max_by_key(|&(pos, _)| pos)
        .map(|(_, arg)| arg)
}

/// The argument of a box command, given the text right after the command name.
fn boxed_argument(s: &str) -> Option<&str> {
    if s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None; // a longer command name such as `\boxedsymbol`
    }
    let t = s.trim_start();
    if t.starts_with('{') {
        return matching_brace(t).map(|close| &t[1..close]);
    }
    // `\boxed 5`: TeX takes the next token as the argument.
    let end = t.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(t.len());
    (s.starts_with(' ') && end > 0).then(|| &t[..end])
}

/// Byte index of the `}` closing the `{` at the start of `s`; escaped braces are skipped.
fn matching_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text before the first `}` that closes no `{` (Dynasor-style probes), if any.
fn before_unmatched_close(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some(&text[..i]),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text after the last answer marker (`####`, `final answer:`, `answer is`, ...),
/// with the marker's own decoration (`:`, `**`, white space) skipped.
fn after_last_marker(text: &str) -> Option<&str> {
    // ASCII lower-casing keeps byte offsets, so positions in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    // `#### Step 2` is a markdown heading; GSM8K's marker is followed by the number.
    let hashes = lower
        .match_indices("####")
        .filter_map(|(pos, _)| {
            let after = lower[pos..].trim_start_matches('#');
            let number = after
                .trim_start_matches([' ', '\t'])
                .starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '$' | '.' | '\\' | '\u{2212}'));
            number.then_some(lower.len() - after.len())
        })
        .last();
    let answer = lower.rmatch_indices("answer").find_map(|(pos, _)| marker_end(&lower, pos));
    let end = match (hashes, answer) {
        (Some(h), Some(a)) => h.max(a),
        (h, a) => h.or(a)?,
    };
    Some(text[end..].trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '_' | ':')))
}

/// Where the answer starts when the word `answer` at `pos` of `lower` is a marker.
fn marker_end(lower: &str, pos: usize) -> Option<usize> {
    let is_word_char = |c: char| c.is_ascii_alphanumeric();
    if lower[..pos].chars().next_back().is_some_and(is_word_char) {
        return None;
    }
    let after_word = pos + "answer".len();
    let rest = &lower[after_word..];
    if rest.starts_with(is_word_char) {
        return None; // "answers", "answered"
    }
    let skipped = rest.trim_start_matches([' ', '\t', '*', '_']);
    let at = after_word + (rest.len() - skipped.len());
    if skipped.starts_with(':') {
        return Some(at + 1);
    }
    if let Some(after_is) = skipped.strip_prefix("is") {
        if !after_is.starts_with(is_word_char) {
            return Some(at + 2);
        }
    }
    // "**Final Answer**" as a heading, the answer on the next lines.
    let heading = lower[..pos].trim_end_matches([' ', '*', '_']).ends_with("final");
    (heading && (skipped.is_empty() || skipped.starts_with(['\n', '\r']))).then_some(at)
}

/// The answer of a math task at the start of `s`: a leading math span, else the first
/// sentence.
fn math_answer(s: &str) -> String {
    let t = s.trim_start();
    let spans = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")];
    for (open, close) in spans {
        if let Some(body) = t.strip_prefix(open) {
            if let Some(end) = find_unescaped(body, close) {
                return body[..end].trim().trim_end_matches('.').trim_end().to_owned();
            }
            // An unclosed span (truncated probe): the line without its opening delimiter.
            return first_sentence(body, false).to_owned();
        }
    }
    first_sentence(t, false).to_owned()
}

/// Byte index of the first `needle` in `s` that is not escaped by a backslash.
fn find_unescaped(s: &str, needle: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if s[i..].starts_with(needle) {
            return Some(i);
        }
        // `\$` and `\\` are escapes; `\)` and `\]` are the closers themselves.
        if bytes[i] == b'\\' && matches!(bytes.get(i + 1), Some(b'$' | b'\\')) {
            i += 1;
        }
        i += 1;
        while !s.is_char_boundary(i) {
            i += 1;
        }
    }
    None
}

/// The first sentence of the first non-empty line of `s`, trimmed, without its terminator.
/// With `abbreviations`, a period after an abbreviation or an initial does not end it
/// unless the next word starts a sentence (`"George V. It was"`).
fn first_sentence(s: &str, abbreviations: bool) -> &str {
    let line = s.trim_start().lines().next().unwrap_or("");
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at_end = !matches!(chars.peek(), Some(&(_, n)) if !n.is_whitespace());
        if matches!(c, '.' | '!' | '?') && at_end {
            let continues =
                c == '.' && abbreviations && is_abbreviation(&line[..i]) && !starts_sentence(&line[i + 1..]);
            if !continues {
                return line[..i].trim();
            }
        }
    }
    line.trim()
}

/// Whether the word just before a period is an initial (`J`), an abbreviation (`St`) or a
/// dotted abbreviation (`U.S`, `p.m`). A period right after another (`Jr..`) is not.
fn is_abbreviation(before: &str) -> bool {
    if before.ends_with('.') {
        return false;
    }
    let word =
        before.rsplit(char::is_whitespace).next().unwrap_or("").trim_start_matches(|c: char| !c.is_alphanumeric());
    let short_letters = |part: &str| (1..=2).contains(&part.chars().count()) && part.chars().all(char::is_alphabetic);
    let initial = word.chars().count() == 1 && short_letters(word);
    let dotted = word.contains('.') && word.split('.').all(short_letters);
    initial || dotted || ABBREVIATIONS.contains(&word)
}

/// Words that begin a new sentence after a period in a model's answer (`"George V. It
/// was..."`); any other word after an initial continues the name (`"John F. Kennedy"`).
const SENTENCE_STARTERS: &[&str] = &[
    "a",
    "after",
    "also",
    "an",
    "and",
    "answer",
    "as",
    "at",
    "because",
    "but",
    "final",
    "he",
    "her",
    "his",
    "however",
    "i",
    "in",
    "it",
    "its",
    "note",
    "on",
    "she",
    "so",
    "that",
    "the",
    "their",
    "there",
    "these",
    "they",
    "this",
    "those",
    "thus",
    "therefore",
    "wait",
    "we",
    "you",
];

/// Whether the text after a period begins with a capitalised word of [`SENTENCE_STARTERS`].
fn starts_sentence(after: &str) -> bool {
    let word: String = after.trim_start().chars().take_while(|c| c.is_alphabetic()).collect();
    word.starts_with(char::is_uppercase) && SENTENCE_STARTERS.contains(&word.to_lowercase().as_str())
}

/// A text answer without LaTeX text wrappers, math delimiters, bold and trailing periods.
fn clean_text_answer(s: &str) -> String {
    let mut out = s.to_owned();
    for name in TEXT_COMMANDS {
        let open = format!("\\{name}{{");
        while let Some(pos) = out.find(&open) {
            let brace = pos + open.len() - 1;
            let Some(close) = matching_brace(&out[brace..]) else {
                break;
            };
            let inner = out[brace + 1..brace + close].to_owned();
            out.replace_range(pos..=brace + close, &inner);
        }
    }
    let out = out.replace("\\(", "").replace("\\)", "").replace('$', "");
    out.trim().trim_matches(['*', '_']).trim().trim_end_matches('.').trim_end().to_owned()
}

/// A number written in text: its byte span and its text (sign and digits, no currency).
#[derive(Debug)]
struct NumberToken {
    start: usize,
    end: usize,
    text: String,
}

/// The numbers in `s`, in order: `42`, `-7`, `$1,000.50`, `.5`, `3/4`. A minus sign counts
/// only when it touches the digits and follows no digit, letter or closing bracket, so
/// `16-3` and `16 - 3` are two positive numbers.
fn number_tokens(s: &str) -> Vec<NumberToken> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |k: usize| chars.get(k).map(|&(_, c)| c);
    let digit = |k: usize| at(k).is_some_and(|c| c.is_ascii_digit());
    let byte = |k: usize| chars.get(k).map_or(s.len(), |&(b, _)| b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        if at(j) == Some('$') {
            j += 1;
        }
        let sign_allowed = j == 0 || !at(j - 1).is_some_and(|p| p.is_alphanumeric() || matches!(p, ')' | ']' | '}'));
        let negative = sign_allowed && matches!(at(j), Some('-' | '\u{2212}'));
        if negative {
            j += 1;
            if at(j) == Some('$') {
                j += 1;
            }
        }
        let starts_with_point = at(j) == Some('.') && digit(j + 1) && !(j > 0 && digit(j - 1));
        if !(digit(j) || starts_with_point) {
            i += 1;
            continue;
        }
        let first_digit = j;
        while digit(j) {
            j += 1;
        }
        while at(j) == Some(',') && digit(j + 1) && digit(j + 2) && digit(j + 3) && !digit(j + 4) {
            j += 4;
        }
        for separator in ['.', '/'] {
            if at(j) == Some(separator) && digit(j + 1) {
                j += 1;
                while digit(j) || (at(j) == Some('.') && digit(j + 1) && separator == '/') {
                    j += 1;
                }
            }
        }
        let mut text = String::from(if negative { "-" } else { "" });
        text.extend(chars[first_digit..j].iter().map(|&(_, c)| c));
        out.push(NumberToken { start: byte(i), end: byte(j), text });
        i = j;
    }
    out
}

/// The number a probe-like text starts with, when its first sentence holds no other digit.
fn leading_number(text: &str) -> Option<String> {
    let first = number_tokens(text).into_iter().next()?;
    let decoration = |c: char| c.is_whitespace() || "$*\\([{:#_\"'".contains(c);
    if !text[..first.start].chars().all(decoration) {
        return None;
    }
    let sentence = first_sentence_span(&text[first.end..]);
    (!sentence.contains(|c: char| c.is_ascii_digit())).then_some(first.text)
}

/// `s` up to its first sentence end (newline, or `.!?` before white space or the end).
fn first_sentence_span(s: &str) -> &str {
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at_end = !matches!(chars.peek(), Some(&(_, n)) if !n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && at_end) {
            return &s[..i];
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------

/// SQuAD's `normalize_answer`, with Unicode punctuation treated like ASCII punctuation.
fn normalize_text(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|&c| !is_punctuation(c)).collect();
    no_punct.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// ASCII punctuation (SQuAD's `string.punctuation`), Latin-1 punctuation and the Unicode
/// General Punctuation block (curly quotes, dashes, ellipsis).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || (!c.is_whitespace()
            && matches!(
                c,
                '\u{a1}' | '\u{a7}' | '\u{ab}' | '\u{b6}' | '\u{b7}' | '\u{bb}' | '\u{bf}' | '\u{2010}'..='\u{205e}'
            ))
}

/// The math normalisation, then a lone number inside leftover words (`1000dollars`).
fn normalize_numeric(s: &str) -> String {
    let m = normalize_math(s);
    if parse_number(&m).is_some() {
        return m;
    }
    let tokens = number_tokens(&m);
    if let [only] = tokens.as_slice() {
        let mut outside = m[..only.start].chars().chain(m[only.end..].chars());
        if !outside.any(|c| c.is_ascii_digit()) {
            if let Some(r) = parse_number(&only.text.replace(',', "")) {
                return r.canonical();
            }
        }
    }
    m
}

/// Math clean-up passes, repeated until nothing changes.
///
/// A step can expose work for an earlier one (stripping `x=` from `x={5}` leaves braces to
/// drop), so one pass is not always a fixed point; iterating to one makes `normalize`
/// idempotent. Real answers settle in two or three passes.
fn normalize_math(s: &str) -> String {
    let mut current = math_pass(s);
    for _ in 0..MAX_MATH_PASSES {
        let next = math_pass(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Bound on [`normalize_math`]'s passes, far above what any answer needs.
const MAX_MATH_PASSES: usize = 8;

/// Brace nesting beyond which an answer is not parsed as LaTeX (keeps recursion bounded on
/// hostile text); such an answer only loses its white space.
const MAX_BRACE_DEPTH: usize = 32;

/// Commands whose argument is text: kept as content, or dropped as a unit after a number.
const TEXT_COMMANDS: &[&str] = &["text", "textbf", "textit", "textrm", "textnormal", "textup", "mbox", "mathrm"];

/// One pass of the math clean-up (see [`normalize`]).
fn math_pass(s: &str) -> String {
    let s = s.trim();
    if brace_depth(s) > MAX_BRACE_DEPTH {
        return s.split_whitespace().collect();
    }
    let mut tokens = clean(&tokenize(s));
    while let [Tok::Group(inner)] = tokens.as_slice() {
        tokens = inner.clone();
    }
    let mut out = String::new();
    serialize(&tokens, &mut out);
    let out = strip_assignment(out.trim_end_matches('.'));
    let out = strip_thousands(out);
    let out = strip_choice(&out);
    let out = canonicalize_numbers(out);
    if !out.is_empty() && out.chars().all(|c| c.is_ascii_alphabetic()) {
        out.to_ascii_lowercase()
    } else {
        out
    }
}

/// The deepest nesting of unescaped braces in `s`.
fn brace_depth(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '{' => {
                depth += 1;
                max = max.max(depth);
            }
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A LaTeX token: enough structure to rewrite commands and their arguments.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A control word such as `\frac` (the name, without the backslash).
    Cmd(String),
    /// A control symbol such as `\,` or `\{` (the symbol).
    Sym(char),
    /// A braced group.
    Group(Vec<Tok>),
    /// Any other character.
    Ch(char),
}

fn tokenize(s: &str) -> Vec<Tok> {
    tokenize_group(&mut s.chars().peekable(), false)
}

/// Tokens up to the `}` closing the current group (or the end; an unclosed group is closed
/// there). A `}` that closes nothing stays a character.
fn tokenize_group(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, in_group: bool) -> Vec<Tok> {
    let mut out = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let mut name = String::new();
                while let Some(n) = chars.next_if(char::is_ascii_alphabetic) {
                    name.push(n);
                }
                if !name.is_empty() {
                    out.push(Tok::Cmd(name));
                } else if let Some(symbol) = chars.next() {
                    out.push(Tok::Sym(symbol));
                }
                // A lone backslash at the end escapes nothing and is dropped.
            }
            '{' => out.push(Tok::Group(tokenize_group(chars, true))),
            '}' if in_group => return out,
            c => out.push(Tok::Ch(c)),
        }
    }
    out
}

/// Tokens that only affect layout: white space, `$`, `~`, `%`, `°`, spacing commands and
/// math-mode delimiters.
fn is_noise(tok: &Tok) -> bool {
    match tok {
        Tok::Ch(c) => c.is_whitespace() || matches!(c, '$' | '~' | '%' | '\u{b0}'),
        Tok::Sym(c) => c.is_whitespace() || matches!(c, ',' | ';' | ':' | '!' | '$' | '%' | '(' | ')' | '[' | ']'),
        Tok::Cmd(name) => matches!(
            name.as_str(),
            "displaystyle"
                | "textstyle"
                | "quad"
                | "qquad"
                | "degree"
                | "left"
                | "right"
                | "bigl"
                | "bigr"
                | "Bigl"
                | "Bigr"
                | "big"
                | "Big"
        ),
        Tok::Group(_) => false,
    }
}

/// Index of the first token at or after `i` that is not white space or spacing.
fn skip_space(toks: &[Tok], i: usize) -> usize {
    let spacing = |t: &Tok| match t {
        Tok::Ch(c) => c.is_whitespace() || *c == '$',
        Tok::Sym(c) => c.is_whitespace() || matches!(c, ',' | ';' | ':' | '!'),
        _ => false,
    };
    toks[i.min(toks.len())..].iter().position(|t| !spacing(t)).map_or(toks.len(), |p| i + p)
}

/// The argument of a command or of `^`/`_` at `i`: a group's content or a single token,
/// and the index after it.
fn take_arg(toks: &[Tok], i: usize) -> (Vec<Tok>, usize) {
    let j = skip_space(toks, i);
    match toks.get(j) {
        Some(Tok::Group(inner)) => (inner.clone(), j + 1),
        Some(tok) => (vec![tok.clone()], j + 1),
        None => (Vec::new(), j),
    }
}

/// The LaTeX clean-up proper, on a token list (recursing into groups).
fn clean(toks: &[Tok]) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let tok = &toks[i];
        i += 1;
        if is_noise(tok) {
            if let Tok::Cmd(name) = tok {
                // `\left.` is an invisible delimiter: drop its dot too.
                let j = skip_space(toks, i);
                if matches!(name.as_str(), "left" | "right") && toks.get(j) == Some(&Tok::Ch('.')) {
                    i = j + 1;
                }
            }
            continue;
        }
        match tok {
            Tok::Ch('\u{2212}') => out.push(Tok::Ch('-')),
            Tok::Ch(c @ ('^' | '_')) => {
                let (arg, next) = take_arg(toks, i);
                i = next;
                let arg = clean(&arg);
                if *c == '^' && arg == [Tok::Cmd("circ".into())] {
                    continue;
                }
                out.push(Tok::Ch(*c));
                out.push(Tok::Group(arg));
            }
            Tok::Group(inner) => out.push(Tok::Group(clean(inner))),
            Tok::Cmd(name) => match name.as_str() {
                "frac" | "dfrac" | "tfrac" | "cfrac" => {
                    let (num, next) = take_arg(toks, i);
                    let (den, next) = take_arg(toks, next);
                    i = next;
                    out.push(Tok::Cmd("frac".into()));
                    out.push(Tok::Group(clean(&num)));
                    out.push(Tok::Group(clean(&den)));
                }
                "sqrt" => {
                    out.push(Tok::Cmd("sqrt".into()));
                    let j = skip_space(toks, i);
                    if toks.get(j) == Some(&Tok::Ch('[')) {
                        if let Some(len) = toks[j..].iter().position(|t| *t == Tok::Ch(']')) {
                            out.push(Tok::Ch('['));
                            out.extend(clean(&toks[j + 1..j + len]));
                            out.push(Tok::Ch(']'));
                            i = j + len + 1;
                        }
                    }
                    let (arg, next) = take_arg(toks, i);
                    i = next;
                    out.push(Tok::Group(clean(&arg)));
                }
                "boxed" | "fbox" => {
                    let (arg, next) = take_arg(toks, i);
                    i = next;
                    out.extend(clean(&arg));
                }
                name if TEXT_COMMANDS.contains(&name) => {
                    let (arg, next) = take_arg(toks, i);
                    i = next;
                    if ends_with_number(&out) && is_unit(&arg) {
                        if let Some(after) = unit_end(toks, i) {
                            i = after;
                            continue;
                        }
                    }
                    out.extend(clean(&arg));
                }
                _ => out.push(tok.clone()),
            },
            _ => out.push(tok.clone()),
        }
    }
    out
}

/// Whether the cleaned tokens end with a number (a digit, or a group of digits such as the
/// denominator of `\frac{270}{7}`).
fn ends_with_number(out: &[Tok]) -> bool {
    let digitish = |t: &Tok| matches!(t, Tok::Ch(c) if c.is_ascii_digit() || *c == '.');
    match out.last() {
        Some(Tok::Ch(c)) => c.is_ascii_digit(),
        Some(Tok::Group(inner)) => !inner.is_empty() && inner.iter().all(digitish),
        _ => false,
    }
}

/// Whether a text argument reads like a unit: letters, spaces and periods only.
fn is_unit(arg: &[Tok]) -> bool {
    let chars = || {
        arg.iter().map(|t| match t {
            Tok::Ch(c) => Some(*c),
            _ => None,
        })
    };
    chars().all(|c| c.is_some_and(|c| c.is_alphabetic() || c.is_whitespace() || c == '.'))
        && chars().any(|c| c.is_some_and(char::is_alphabetic))
}

/// When a unit at `i` ends a term (optionally with an exponent: `cm}^2`), the index after
/// the unit and its exponent.
fn unit_end(toks: &[Tok], i: usize) -> Option<usize> {
    let mut j = skip_space(toks, i);
    if toks.get(j) == Some(&Tok::Ch('^')) {
        j = skip_space(toks, take_arg(toks, j + 1).1);
    }
    match toks.get(j) {
        None | Some(Tok::Ch(',' | ')' | ']' | ';' | '&') | Tok::Sym('\\')) => Some(j),
        Some(Tok::Cmd(name)) if name == "right" => Some(j),
        _ => None,
    }
}

fn serialize(toks: &[Tok], out: &mut String) {
    for (k, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Cmd(name) => {
                out.push('\\');
                out.push_str(name);
                // Only a space can end a command name before a letter (`\pi r`).
                if matches!(toks.get(k + 1), Some(Tok::Ch(c)) if c.is_ascii_alphabetic()) {
                    out.push(' ');
                }
            }
            Tok::Sym(c) => {
                out.push('\\');
                out.push(*c);
            }
            Tok::Group(inner) => {
                out.push('{');
                serialize(inner, out);
                out.push('}');
            }
            Tok::Ch(c) => out.push(*c),
        }
    }
}

/// `x=5` → `5` when the left side is a single variable, optionally subscripted.
fn strip_assignment(s: &str) -> &str {
    let Some((lhs, rhs)) = s.split_once('=') else {
        return s;
    };
    if rhs.is_empty() || rhs.contains('=') {
        return s;
    }
    let base_len = if lhs.starts_with(|c: char| c.is_ascii_alphabetic()) {
        1
    } else if let Some(name) = lhs.strip_prefix('\\') {
        let letters = name.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(name.len());
        if letters == 0 {
            return s;
        }
        letters + 1
    } else {
        return s;
    };
    let subscript = &lhs[base_len..];
    let is_variable = subscript.is_empty()
        || subscript
            .strip_prefix("_{")
            .and_then(|r| r.strip_suffix('}'))
            .is_some_and(|inner| !inner.is_empty() && !inner.contains(['{', '}']));
    if is_variable {
        rhs
    } else {
        s
    }
}

/// `1,234,567.5` → `1234567.5` when the whole string is a number with thousands separators.
fn strip_thousands(s: &str) -> String {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let int_part = body.split_once('.').map_or(body, |(i, f)| {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            "" // not a decimal: fails the group check below
        } else {
            i
        }
    });
    let mut groups = int_part.split(',');
    let head_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
    let rest_ok = groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    if head_ok && rest_ok && int_part.contains(',') {
        s.replace(',', "")
    } else {
        s.to_owned()
    }
}

/// `(C)` → `C`: a lettered multiple-choice option.
fn strip_choice(s: &str) -> String {
    let inner = s.strip_prefix('(').and_then(|r| r.strip_suffix(')'));
    match inner {
        Some(letter) if letter.len() == 1 && letter.bytes().all(|b| b.is_ascii_alphabetic()) => letter.to_owned(),
        _ => s.to_owned(),
    }
}

/// Trailing zeros of decimals dropped everywhere; every delimited part that is a number
/// replaced by its canonical form.
fn canonicalize_numbers(s: String) -> String {
    let s = trim_decimal_zeros(&s);
    split_parts(&s)
        .into_iter()
        .map(|piece| parse_number(piece).map_or_else(|| piece.to_owned(), Rational::canonical))
        .collect()
}

/// `2.50` → `2.5`, `3.0` → `3`, wherever a decimal literal occurs.
fn trim_decimal_zeros(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let is_point = bytes[i] == b'.'
            && i > 0
            && bytes[i - 1].is_ascii_digit()
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if !is_point {
            let len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + len]);
            i += len;
            continue;
        }
        let digits_end = bytes[i + 1..].iter().position(|b| !b.is_ascii_digit()).map_or(bytes.len(), |p| i + 1 + p);
        let fraction = s[i + 1..digits_end].trim_end_matches('0');
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
        i = digits_end;
    }
    out
}

/// `s` cut into parts and the delimiters between them, at brace depth 0; concatenated they
/// give back `s`. (A delimiter is never a number, so callers need not tell them apart.)
fn split_parts(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i, mut depth) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        let delimiter_len = if depth > 0 {
            0
        } else if bytes[i] == b'\\' {
            let rest = &s[i + 1..];
            if rest.starts_with(['\\', '{', '}']) {
                2
            } else if rest.starts_with("begin{") || rest.starts_with("end{") {
                rest.find('}').map_or(s.len() - i, |close| close + 2)
            } else {
                0
            }
        } else if b",()[];&|=".contains(&bytes[i]) {
            1
        } else {
            0
        };
        if delimiter_len > 0 {
            if start < i {
                parts.push(&s[start..i]);
            }
            parts.push(&s[i..i + delimiter_len]);
            i += delimiter_len;
            start = i;
            continue;
        }
        match bytes[i] {
            b'\\' => i += 1, // an escaped brace does not nest
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
        while !s.is_char_boundary(i.min(s.len())) {
            i += 1;
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
}

/// An exact rational number: sign, numerator and denominator in lowest terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rational {
    negative: bool,
    num: u128,
    den: u128,
}

impl Rational {
    /// `None` for a zero denominator (so `gcd` below is never 0). Zero is never negative.
    fn new(negative: bool, num: u128, den: u128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den);
        Some(Self { negative: negative && num != 0, num: num / g, den: den / g })
    }

    /// `self / other`; `None` on overflow or division by zero.
    fn div(self, other: Self) -> Option<Self> {
        Self::new(self.negative != other.negative, self.num.checked_mul(other.den)?, self.den.checked_mul(other.num)?)
    }

    /// `self + other` for non-negative numbers (mixed numbers); `None` on overflow.
    fn add_unsigned(self, other: Self) -> Option<Self> {
        let num = self.num.checked_mul(other.den)?.checked_add(other.num.checked_mul(self.den)?)?;
        Self::new(false, num, self.den.checked_mul(other.den)?)
    }

    fn negate_if(self, negative: bool) -> Self {
        Self { negative: self.negative != negative && self.num != 0, ..self }
    }

    /// The shortest decimal when the denominator divides a power of ten (`0.5`, `-12`),
    /// `p/q` otherwise (`1/3`).
    fn canonical(self) -> String {
        let sign = if self.negative { "-" } else { "" };
        let (mut rest, mut twos, mut fives) = (self.den, 0u32, 0u32);
        while rest % 2 == 0 {
            rest /= 2;
            twos += 1;
        }
        while rest % 5 == 0 {
            rest /= 5;
            fives += 1;
        }
        if rest == 1 {
            let places = twos.max(fives);
            let scaled = 10u128.checked_pow(places).and_then(|p| (p / self.den).checked_mul(self.num).map(|s| (s, p)));
            if let Some((scaled, power)) = scaled {
                let (int, frac) = (scaled / power, scaled % power);
                return if places == 0 {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac:0>width$}", width = places as usize)
                };
            }
        }
        format!("{sign}{}/{}", self.num, self.den)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// An unsigned decimal literal: `12`, `12.5`, `.5`, `12.`.
fn parse_unsigned_decimal(s: &str) -> Option<Rational> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let num: u128 = format!("{int}{frac}").parse().ok()?;
    Rational::new(false, num, 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?)
}

/// A decimal literal with an optional sign.
fn parse_signed_decimal(s: &str) -> Option<Rational> {
    let (negative, body) = split_sign(s);
    parse_unsigned_decimal(body).map(|r| r.negate_if(negative))
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

/// A whole string that is a number: an optionally signed decimal, `a/b`, `\frac{a}{b}` or
/// a mixed number `w\frac{a}{b}` (integers). Thousands separators must be gone already.
fn parse_number(s: &str) -> Option<Rational> {
    let (negative, body) = split_sign(s);
    let value = if let Some(r) = parse_unsigned_decimal(body) {
        r
    } else if let Some((whole, frac)) = body.split_once("\\frac{") {
        let (a, b) = frac.strip_suffix('}')?.split_once("}{")?;
        if whole.is_empty() {
            parse_signed_decimal(a)?.div(parse_signed_decimal(b)?)?
        } else {
            let is_int = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if !(is_int(whole) && is_int(a) && is_int(b)) {
                return None;
            }
            let part = parse_unsigned_decimal(a)?.div(parse_unsigned_decimal(b)?)?;
            parse_unsigned_decimal(whole)?.add_unsigned(part)?
        }
    } else {
        let (a, b) = body.split_once('/')?;
        parse_unsigned_decimal(a)?.div(parse_signed_decimal(b)?)?
    };
    Some(value.negate_if(negative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gold(aliases: &[&str]) -> Vec<String> {
        aliases.iter().map(|s| (*s).to_owned()).collect()
    }

    /// `(task, model text, expected extraction)`.
    #[rustfmt::skip]
    const EXTRACT_CASES: &[(Task, &str, &str)] = &[
        // Boxed: last wins, nested braces, \fbox, truncated last box, `\boxed 5`.
        (Task::Math, "so \\boxed{3} or rather \\boxed{4}", "4"),
        (Task::Math, "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        (Task::Math, "Thus $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        (Task::Math, "\\fbox{7}", "7"),
        (Task::Math, "\\boxed{\\{1\\pm\\sqrt{5},-2\\}}", "\\{1\\pm\\sqrt{5},-2\\}"),
        (Task::Math, "\\boxed{5} then \\boxed{\\frac{1}{", "5"),
        (Task::Math, "so $\\boxed 5$.", "5"),
        (Task::Math, "**Final Answer**\n\n\\[ \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)} \\]", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        (Task::Numeric, "The total is \\boxed{\\$1,000}.", "\\$1,000"),
        (Task::Text, "\\boxed{\\text{Paris}}", "Paris"),
        // GSM8K `####`.
        (Task::Numeric, "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
        (Task::Numeric, "#### 1,000", "1,000"),
        (Task::Numeric, "####-10", "-10"),
        (Task::Numeric, "#### Step 1\nAdd 2 and 3.\n#### Step 2\nSo 5 eggs.", "5"),
        // Final answer markers, case and bold.
        (Task::Numeric, "Reasoning 3 + 4 = 7.\nFinal answer: 7", "7"),
        (Task::Numeric, "**Final Answer**: $18.", "18"),
        (Task::Numeric, "**Final Answer:** The robe needs 3 bolts.", "3"),
        (Task::Numeric, "FINAL ANSWER: -$5", "-5"),
        (Task::Numeric, "Final answer: $-5", "-5"),
        (Task::Numeric, "The answer is 18,000.", "18,000"),
        (Task::Numeric, "The answer is: 0.5", "0.5"),
        (Task::Numeric, "Answer: 3/4 of a cup", "3/4"),
        (Task::Numeric, "answer: .5", ".5"),
        (Task::Numeric, "Final answer: Let me think about it", ""),
        (Task::Numeric, "The answer is 12. Earlier I wrote answered 5.", "12"),
        (Task::Math, "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        (Task::Math, "The answer is $\\$18.90$.", "\\$18.90"),
        (Task::Math, "Final answer: x = 5. But wait", "x = 5"),
        (Task::Math, "Answer: \\(x^2\\)", "x^2"),
        (Task::Math, "Final answer: $$3, 5, 7$$", "3, 5, 7"),
        (Task::Math, "Final answer: $18", "18"),
        (Task::Text, "The answer is The Eiffel Tower.", "The Eiffel Tower"),
        (Task::Text, "Final answer: **Paris**.\nIt is in France.", "Paris"),
        (Task::Text, "Answer: St. Louis. It is in Missouri.", "St. Louis"),
        (Task::Text, "Answer: J. K. Rowling", "J. K. Rowling"),
        (Task::Text, "answer: Washington, D.C.", "Washington, D.C"),
        (Task::Text, "Final Answer\nParis", "Paris"),
        // A hallucinated next example is ignored.
        (Task::Text, "Paris.\n\nQuestion: capital of Peru?\nAnswer: Lima", "Paris"),
        (Task::Numeric, "18\n\nQuestion: How many eggs?\nAnswer: 12", "18"),
        (Task::Numeric, "Question: Janet has 3 eggs.\nShe buys 2. The answer is 5.", "5"),
        // No marker: probes start with the answer.
        (Task::Numeric, "18. The robe needs 2 bolts of blue and 1 of white.", "18"),
        (Task::Numeric, "$18$", "18"),
        (Task::Numeric, " **1,250** dollars\nbecause 5 * 250 = 1250", "1,250"),
        (Task::Numeric, "18}\n\\]", "18"),
        (Task::Numeric, "-3 degrees", "-3"),
        // No marker, full solution: last number.
        (Task::Numeric, "Janet sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18 dollars.", "18"),
        (Task::Numeric, "16 - 3 - 4 = 9, and 9 * 2 = 18", "18"),
        (Task::Numeric, "It takes 2/2=1 bolt, so 2+1=3", "3"),
        (Task::Numeric, "no digits here", ""),
        (Task::Math, "$\\frac{1}{2}$. So the probability", "\\frac{1}{2}"),
        (Task::Math, "\\frac{1}{2}}\n\\]", "\\frac{1}{2}"),
        (Task::Math, "x = 5\n\nWait, let me", "x = 5"),
        (Task::Text, "Paris.\n\nQuestion:", "Paris"),
        (Task::Text, "  \n The Eiffel Tower. It was built in 1889.", "The Eiffel Tower"),
        (Task::Text, "Paris}", "Paris"),
        (Task::Text, "Mr. Smith", "Mr. Smith"),
        (Task::Text, "George V. It was his grandson.", "George V"),
        (Task::Text, "John F. Kennedy. He was shot.", "John F. Kennedy"),
        (Task::Text, "Robert Downey Jr. It was 2008.", "Robert Downey Jr"),
        (Task::Text, "Robert Downey Jr.. It was 2008.", "Robert Downey Jr"),
        (Task::Text, "11 p.m. to 3 a.m. on weekdays", "11 p.m. to 3 a.m. on weekdays"),
        (Task::Text, "17.32%. It rose later.", "17.32%"),
        (Task::Text, "Reverend J.Long. Then", "Reverend J.Long"),
        (Task::Text, "", ""),
    ];

    #[test]
    fn extraction_table() {
        for &(task, text, expected) in EXTRACT_CASES {
            assert_eq!(extract(task, text), expected, "{task}: {text:?}");
        }
    }

    /// `(task, a, b, should match)`: `exact_match(task, a, &[b])`.
    #[rustfmt::skip]
    const MATCH_CASES: &[(Task, &str, &str, bool)] = &[
        // Text: SQuAD.
        (Task::Text, "The Eiffel Tower.", "eiffel tower", true),
        (Task::Text, "an  apple", "Apple", true),
        (Task::Text, "“Rock ’n’ Roll”", "rock n roll", true),
        (Task::Text, "54\u{a0}Mbit/s", "54 mbits", true),
        (Task::Text, "Theodore Roosevelt", "roosevelt", false),
        (Task::Text, "the cat", "cat dog", false),
        (Task::Text, "the", "a", false), // both normalise to "": never a match
        // Numeric: exact equality.
        (Task::Numeric, "1,000", "1000", true),
        (Task::Numeric, "1000.00", "1000", true),
        (Task::Numeric, "$1,000", "1000", true),
        (Task::Numeric, "1000 dollars", "1,000", true),
        (Task::Numeric, "$1,234.50", "1234.5", true),
        (Task::Numeric, "0.5", ".5", true),
        (Task::Numeric, "0.50", "1/2", true),
        (Task::Numeric, "25%", "25", true),
        (Task::Numeric, "25 percent", "25", true),
        (Task::Numeric, "18.", "18", true),
        (Task::Numeric, "-10", "-10", true),
        (Task::Numeric, "\u{2212}10", "-10", true),
        (Task::Numeric, "\\$18", "18", true),
        (Task::Numeric, "\\frac{1}{2}", "0.5", true),
        (Task::Numeric, "x = 5", "5", true),
        (Task::Numeric, "007", "7", true),
        (Task::Numeric, "12", "1.2", false),
        (Task::Numeric, "-10", "10", false),
        (Task::Numeric, "1/3", "0.33", false),
        (Task::Numeric, "18 and 20", "18", false),
        (Task::Numeric, "", "0", false),
        // Math: fractions and decimals.
        (Task::Math, "0.5", "1/2", true),
        (Task::Math, "\\frac{1}{2}", "0.5", true),
        (Task::Math, "\\dfrac12", "\\frac{1}{2}", true),
        (Task::Math, "\\tfrac{1}{2}", ".5", true),
        (Task::Math, "\\frac 34", "0.75", true),
        (Task::Math, "\\frac9{19}", "\\frac{9}{19}", true),
        (Task::Math, "-\\frac{24}{25}", "-0.96", true),
        (Task::Math, "\\frac{-3}{8}", "-\\frac{3}{8}", true),
        (Task::Math, "\\frac{35}{9}", "35/9", true),
        (Task::Math, "137 \\frac{1}{2}", "137.5", true),
        (Task::Math, "1\\frac{4}{5}", "\\frac95", true),
        (Task::Math, ".0000672", "0.0000672", true),
        (Task::Math, "1/3", "0.33", false),
        (Task::Math, "12", "1.2", false),
        (Task::Math, "\\frac{1}{2}", "\\frac{2}{1}", false),
        // Math: LaTeX clean-up.
        (Task::Math, "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}2", true),
        (Task::Math, "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", true),
        (Task::Math, "\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", true),
        (Task::Math, "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6,\\frac83]", true),
        (Task::Math, "10^\\circ", "10", true),
        (Task::Math, "120^{\\circ}", "120", true),
        (Task::Math, "90°", "90", true),
        (Task::Math, "\\text{(C)}", "C", true),
        (Task::Math, "(B)", "\\text{(B)}", true),
        (Task::Math, "\\text{Evelyn}", "Evelyn", true),
        (Task::Math, "\\text{east}", "East", true),
        (Task::Math, "x = 5", "5", true),
        (Task::Math, "y = 2x + 3", "2x+3", true),
        (Task::Math, "k_{1} = 4", "4", true),
        (Task::Math, "5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0", true),
        (Task::Math, "\\sqrt2", "\\sqrt{2}", true),
        (Task::Math, "11\\sqrt2", "11 \\sqrt{2}", true),
        (Task::Math, "\\sqrt[3]{2}", "\\sqrt[3]2", true),
        (Task::Math, "10,\\!080", "10080", true),
        (Task::Math, "11,\\! 111,\\! 111,\\! 100", "11111111100", true),
        (Task::Math, "\\$32,\\!348", "32348", true),
        (Task::Math, "\\$18.90", "18.9", true),
        (Task::Math, "5.4 \\text{ cents}", "5.4", true),
        (Task::Math, "15\\mbox{ cm}^2", "15", true),
        (Task::Math, "864 \\mbox{ inches}^2", "864", true),
        (Task::Math, "\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", true),
        (Task::Math, "50\\%", "50", true),
        (Task::Math, "$\\displaystyle \\frac{1}{4}$.", "0.25", true),
        (Task::Math, "4210_{5}", "4210_5", true),
        (Task::Math, "x^2+1", "x^{2} + 1", true),
        (Task::Math, "2 \\pi r", "2\\pi r", true),
        (Task::Math, "\\{1\\pm\\sqrt{5},-2\\}", "\\left\\{ 1 \\pm \\sqrt5, -2 \\right\\}", true),
        (Task::Math, "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix}\\frac15\\\\-\\frac{18}{5}\\end{pmatrix}", true),
        (Task::Math, "(-\\infty, 0]", "\\left( -\\infty,0 \\right]", true),
        (Task::Math, "2.50\\pi", "2.5\\pi", true),
        (Task::Math, "\\cot x", "\\cot x", true),
        (Task::Math, "3, 5, 7", "3,5,7", true),
        (Task::Math, "3,5,7", "357", false),
        (Task::Math, "(3,\\frac{\\pi}{2})", "(3,\\frac{\\pi}{3})", false),
        (Task::Math, "2k", "2", false),
        (Task::Math, "x = 5", "y = 6", false),
        (Task::Math, "5x - 7y + 11z + 4 = 0", "0", false),
        (Task::Math, "\\pi r", "\\pir", false),
        (Task::Math, "", "", false),
    ];

    #[test]
    fn exact_match_table() {
        for &(task, a, b, expected) in MATCH_CASES {
            assert_eq!(exact_match(task, a, &gold(&[b])), expected, "{task}: {a:?} vs {b:?}");
            assert_eq!(exact_match(task, b, &gold(&[a])), expected, "{task}: {b:?} vs {a:?}");
        }
    }

    #[test]
    fn exact_match_any_alias() {
        let aliases = gold(&["14 December 1972 UTC", "December 1972"]);
        assert!(exact_match(Task::Text, "December 1972.", &aliases));
        assert!(!exact_match(Task::Text, "1972", &aliases));
        assert!(!exact_match(Task::Text, "Paris", &[]));
    }

    /// `(task, answer, normal form)`: pins the canonical representations.
    #[rustfmt::skip]
    const NORMAL_FORMS: &[(Task, &str, &str)] = &[
        (Task::Text, "  The  Eiffel\tTower. ", "eiffel tower"),
        (Task::Numeric, "$1,000.00", "1000"),
        (Task::Numeric, "0.50", "0.5"),
        (Task::Numeric, "-0", "0"),
        (Task::Numeric, "2/6", "1/3"),
        (Task::Numeric, "about 7 apples", "7"),
        (Task::Math, "\\dfrac{2}{4}", "0.5"),
        (Task::Math, "\\frac{10}{3}", "10/3"),
        (Task::Math, "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        (Task::Math, "\\frac12x", "\\frac{1}{2}x"),
        (Task::Math, "x={5}", "5"),
        (Task::Math, "\\text{(C)}", "c"),
        (Task::Math, "\\sqrt2", "\\sqrt{2}"),
        (Task::Math, "\\frac{1}{0}", "\\frac{1}{0}"),
        (Task::Math, "100000000000000000000000000000000000000000", "100000000000000000000000000000000000000000"),
    ];

    #[test]
    fn normal_forms() {
        for &(task, answer, expected) in NORMAL_FORMS {
            assert_eq!(normalize(task, answer), expected, "{task}: {answer:?}");
        }
    }

    #[test]
    fn hedging_words() {
        let hedging = [
            "Wait, that is wrong",
            "hmm",
            "Hmmm, 18",
            "18. But the robe",
            "However, ",
            "Alternatively 20",
            "Let me recompute",
            "I should check",
            "double-check: 18",
            "recheck",
            "maybe 18",
            "Perhaps 18",
            "I'm not sure",
            "18?",
            "Okay, so",
            "Hold on",
            "let me",
            "WAIT",
        ];
        for text in hedging {
            assert!(is_hedging(text), "{text:?}");
        }
        let certain = [
            "18",
            "The answer is 18.",
            "\\frac{1}{2}",
            "Paris",
            "No",
            "a button",
            "checked luggage",
            "the tank can hold 5 litres",
            "awaiting",
            "",
        ];
        for text in certain {
            assert!(!is_hedging(text), "{text:?}");
        }
    }

    #[test]
    fn task_names_round_trip() {
        for task in [Task::Text, Task::Numeric, Task::Math] {
            assert_eq!(task.to_string().parse::<Task>(), Ok(task));
            assert_eq!(task.to_string().to_uppercase().parse::<Task>(), Ok(task));
            assert_eq!(serde_json::to_string(&task).ok(), Some(format!("\"{task}\"")));
        }
    }

    #[test]
    fn task_name_error_lists_valid_values() {
        match "numbers".parse::<Task>() {
            Ok(task) => panic!("parsed as {task}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("\"numbers\""), "{message}");
                assert!(message.contains("text, numeric, math"), "{message}");
            }
        }
    }

    #[test]
    fn gsm8k_gold() {
        let solution = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18";
        assert_eq!(gold_from_gsm8k_solution(solution).as_deref(), Some("18"));
        assert_eq!(gold_from_gsm8k_solution("a #### 1\n#### 2,125 \n").as_deref(), Some("2,125"));
        assert_eq!(gold_from_gsm8k_solution("no answer line"), None);
        assert_eq!(gold_from_gsm8k_solution("#### "), None);
    }

    #[test]
    fn rationals_are_exact() {
        assert_eq!(parse_number("0.1").map(Rational::canonical).as_deref(), Some("0.1"));
        assert_eq!(parse_number("1/8").map(Rational::canonical).as_deref(), Some("0.125"));
        assert_eq!(parse_number("-4/6").map(Rational::canonical).as_deref(), Some("-2/3"));
        assert_eq!(parse_number("1/0"), None);
        assert_eq!(parse_number("1,000"), None);
    }

    /// Answer-like strings: LaTeX fragments, numbers and words glued together.
    fn answer_like() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "\\frac",
            "\\dfrac",
            "\\tfrac",
            "\\sqrt",
            "\\text",
            "\\mbox",
            "\\boxed",
            "\\left",
            "\\right",
            "\\pi",
            "\\circ",
            "^",
            "_",
            "{",
            "}",
            "\\{",
            "\\}",
            "(",
            ")",
            "[",
            "]",
            "$",
            "\\$",
            "\\!",
            "\\,",
            ",",
            ".",
            "/",
            "-",
            "=",
            " ",
            "\\",
            "\\\\",
            "%",
            "x",
            "y",
            "C",
            "the",
            "a",
            "0",
            "1",
            "2",
            "5",
            "00",
            "12",
            "1,000",
            "0.50",
            ".5",
            "cm",
            "\\begin{pmatrix}",
            "\\end{pmatrix}",
            "&",
            "\u{2212}",
            "°",
            "é",
            "’",
        ]);
        prop::collection::vec(pieces, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn normalize_is_idempotent_on_answers(s in answer_like()) {
            for task in [Task::Text, Task::Numeric, Task::Math] {
                let once = normalize(task, &s);
                prop_assert_eq!(normalize(task, &once), once.clone(), "{} {:?}", task, s);
            }
        }

        #[test]
        fn normalize_is_idempotent_on_any_text(s in "\\PC{0,40}") {
            for task in [Task::Text, Task::Numeric, Task::Math] {
                let once = normalize(task, &s);
                prop_assert_eq!(normalize(task, &once), once.clone(), "{} {:?}", task, s);
            }
        }

        #[test]
        fn numbers_match_their_formatted_variants(n in -10_000_000i64..10_000_000, cents in 0u8..100) {
            let plain = format!("{n}.{cents:02}");
            let gold = gold(&[plain.as_str()]);
            let negative = if n < 0 { "-" } else { "" };
            let grouped = group_thousands(n.unsigned_abs());
            for variant in [
                format!("{negative}${grouped}.{cents:02}"),
                format!("{negative}{grouped}.{cents:02}0 dollars"),
                format!("The answer is {plain}."),
            ] {
                let answer = extract(Task::Numeric, &variant);
                prop_assert!(exact_match(Task::Numeric, &answer, &gold), "{:?} -> {:?}", variant, answer);
            }
        }

        #[test]
        fn extract_never_panics(s in "\\PC{0,60}", task in prop::sample::select(vec![Task::Text, Task::Numeric, Task::Math])) {
            let _ = extract(task, &s);
            let _ = is_hedging(&s);
        }
    }

    fn group_thousands(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        let offset = digits.len() % 3;
        for (k, c) in digits.chars().enumerate() {
            if k > 0 && k % 3 == offset {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}
