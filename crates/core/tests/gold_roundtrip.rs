//! Every gold answer of the shared evaluation data must survive the ways a model writes a
//! final answer: wrap it (`\boxed{..}`, `#### ..`, `Final answer: $..$`, ...), extract it
//! back with `answer::extract`, and it must still be an Exact Match for itself.
//!
//! This pins the extractor and the normaliser to the real answer shapes of GSM8K (integers,
//! negatives, thousands separators), MATH-500 (fractions, intervals, matrices, units,
//! `\text{..}`, bases, ...) and NQ-open (names with initials and abbreviations, dates,
//! percentages). No GSM8K or MATH-500 item is excluded; four NQ-open aliases are, for the
//! reasons given at [`nq_open_aliases_survive_formatting`].
//!
//! The data ships with the repository, in `data/eval` (sources and licences in its README).

use std::path::PathBuf;

use serde_json::Value;
use stopwise_core::answer::{exact_match, extract, gold_from_gsm8k_solution, normalize, Task};

fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/eval").join(file)
}

/// The JSON objects of a `.jsonl` data file.
fn read_jsonl(file: &str) -> Result<Vec<Value>, String> {
    let path = data_path(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("{file}:{}: {e}", n + 1)))
        .collect()
}

fn field<'a>(item: &'a Value, name: &str) -> Result<&'a str, String> {
    item.get(name).and_then(Value::as_str).ok_or_else(|| format!("no string field {name:?} in {item}"))
}

/// `1234567` → `1,234,567`; other answers unchanged.
fn with_thousands_separators(answer: &str) -> String {
    let (sign, digits) = answer.strip_prefix('-').map_or(("", answer), |d| ("-", d));
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return answer.to_owned();
    }
    let mut out = sign.to_owned();
    let offset = digits.len() % 3;
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && k % 3 == offset {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Wraps `gold` in each variant, extracts it back and collects the variants that fail EM.
fn failures(task: Task, gold: &str, variants: &[String]) -> Vec<String> {
    let aliases = [gold.to_owned()];
    variants
        .iter()
        .filter_map(|text| {
            let extracted = extract(task, text);
            (!exact_match(task, &extracted, &aliases)).then(|| {
                format!(
                    "gold {gold:?} ({:?}): {text:?} -> {extracted:?} ({:?})",
                    normalize(task, gold),
                    normalize(task, &extracted)
                )
            })
        })
        .collect()
}

fn assert_no_failures(what: &str, items: usize, failed: &[String]) {
    assert!(items > 0, "{what}: no items read");
    assert!(failed.is_empty(), "{what}: {} of the variants failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn gsm8k_gold_survives_formatting() -> Result<(), String> {
    let items = read_jsonl("gsm8k_test_500.jsonl")?;
    assert_eq!(items.len(), 500);
    let mut failed = Vec::new();
    for item in &items {
        let solution = field(item, "answer")?;
        let gold = gold_from_gsm8k_solution(solution).ok_or_else(|| format!("no #### in {solution:?}"))?;
        let grouped = with_thousands_separators(&gold);
        let variants = [
            format!("The answer is {gold}."),
            format!("#### {gold}"),
            format!("\\boxed{{{gold}}}"),
            format!("Final answer: ${gold}"),
            format!("The answer is {grouped}."),
            format!("#### {grouped}"),
            format!("\\boxed{{{grouped}}}"),
            format!("Final answer: ${grouped}"),
            format!("**Final Answer**: {grouped} dollars"),
            // A probe continuing after the suffix "Final answer: ".
            format!("{grouped}. Then 3 more."),
            // The reference solution itself: its `####` line.
            solution.to_owned(),
        ];
        failed.extend(failures(Task::Numeric, &gold, &variants));
    }
    assert_no_failures("GSM8K", items.len(), &failed);
    Ok(())
}

#[test]
fn math500_gold_survives_formatting() -> Result<(), String> {
    let items = read_jsonl("math500.jsonl")?;
    assert_eq!(items.len(), 500);
    let mut failed = Vec::new();
    for item in &items {
        let gold = field(item, "answer")?;
        let variants = [
            format!("\\boxed{{{gold}}}"),
            format!("Final Answer: ${gold}$"),
            format!("The answer is ${gold}$."),
            format!("**Final Answer**\n\n\\[ \\boxed{{{gold}}} \\]"),
            format!("Final Answer: The final answer is ${gold}$. I hope it is correct."),
            format!("so the result is $\\fbox{{{gold}}}$"),
            // Same value, other spellings: \dfrac, \displaystyle, spaces after commas.
            format!("Final answer: $\\displaystyle {}$", gold.replace("\\frac", "\\dfrac")),
            format!("\\boxed{{ {} }}", gold.replace(',', ", ")),
            // The reference solution itself: its last `\boxed{..}`.
            field(item, "solution")?.to_owned(),
        ];
        failed.extend(failures(Task::Math, gold, &variants));
    }
    assert_no_failures("MATH-500", items.len(), &failed);
    Ok(())
}

/// NQ-open aliases, written the ways a model or a probe ends a short answer.
///
/// Excluded, because no text can ever match them under SQuAD normalisation: aliases whose
/// normal form is empty (`---`, `)`, `A+` → `a` → article removed). Also excluded:
/// `Passion. Connected.`, an alias made of two sentences, which the sentence rule cuts after
/// `Passion` by design.
#[test]
fn nq_open_aliases_survive_formatting() -> Result<(), String> {
    const MULTI_SENTENCE: &[&str] = &["Passion. Connected."];
    let items = read_jsonl("nq_open_dev_a.jsonl")?;
    assert_eq!(items.len(), 1800);
    let (mut checked, mut excluded, mut failed) = (0usize, 0usize, Vec::new());
    for item in &items {
        let aliases =
            item.get("answer").and_then(Value::as_array).ok_or_else(|| format!("no answer list in {item}"))?;
        for alias in aliases {
            let alias = alias.as_str().ok_or_else(|| format!("non-string alias in {item}"))?;
            if normalize(Task::Text, alias).is_empty() || MULTI_SENTENCE.contains(&alias) {
                excluded += 1;
                continue;
            }
            checked += 1;
            let variants = [
                format!("Answer: {alias}"),
                format!("The answer is {alias}."),
                format!("Final answer: **{alias}**"),
                format!("\\boxed{{{alias}}}"),
                // Probes continuing after "Final answer: ".
                format!(" {alias}.\n\nQuestion: who wrote it\nAnswer: someone else"),
                format!("{alias}. It was a long time ago."),
            ];
            failed.extend(failures(Task::Text, alias, &variants));
        }
    }
    assert_eq!(excluded, 4, "the documented exclusions changed");
    assert_no_failures("NQ-open", checked, &failed);
    Ok(())
}

/// Normal forms are fixed points on real answers too, not only on generated strings.
#[test]
fn gold_normal_forms_are_fixed_points() -> Result<(), String> {
    let mut golds = Vec::new();
    for item in read_jsonl("gsm8k_test_500.jsonl")? {
        if let Some(gold) = gold_from_gsm8k_solution(field(&item, "answer")?) {
            golds.push((Task::Numeric, gold));
        }
    }
    for item in read_jsonl("math500.jsonl")? {
        golds.push((Task::Math, field(&item, "answer")?.to_owned()));
    }
    assert_eq!(golds.len(), 1000);
    for (task, gold) in &golds {
        let once = normalize(*task, gold);
        assert!(!once.is_empty(), "{task} gold {gold:?} normalises to nothing");
        assert_eq!(normalize(*task, &once), once, "{task} gold {gold:?}");
    }
    Ok(())
}
