//! Accepted means correct: random documents and random queries of every documented syntax
//! form (terms, keywords, numbers, ranges open and closed, comparisons, sets, exists, phrases
//! with and without slop, prefixes, fuzzy terms, boolean nesting, exclusions, boosts), each
//! checked against a brute-force evaluation over the stored fields. The seed is printed;
//! `PRISM_DIFF_SEED` replays one and `PRISM_DIFF_QUERIES` runs more queries.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;

const WORDS: [&str; 8] = [
    "apple", "banana", "cherry", "date", "elder", "fig", "grape", "honey",
];
const TAGS: [&str; 3] = ["red", "green", "blue"];

struct Doc {
    id: String,
    title: Vec<String>,
    /// The terms the index holds for `title` (the `en` analyzer stems them): what prefixes
    /// and fuzzy terms match, as in Elasticsearch.
    indexed: Vec<String>,
    tag: Option<String>,
    year: Option<i64>,
}

/// A query as generated: rendered to the query string, and evaluated by brute force.
#[derive(Debug, Clone)]
enum Q {
    Term(String),
    TitleTerm(String),
    Tag(String),
    Year(i64),
    Range {
        lower: Option<(i64, bool)>,
        upper: Option<(i64, bool)>,
    },
    Compare(&'static str, i64),
    Set(Vec<String>),
    Exists {
        range_form: bool,
    },
    All,
    Phrase(Vec<String>, u32),
    Prefix(String),
    Fuzzy(String, u32),
    And(Box<Q>, Box<Q>),
    Or(Box<Q>, Box<Q>),
    AndNot(Box<Q>, Box<Q>),
    MustMustNot(Box<Q>, Box<Q>),
    OnlyNot(Box<Q>),
    Boost(Box<Q>, u32),
}

impl Q {
    fn render(&self) -> String {
        match self {
            Q::Term(w) => w.clone(),
            Q::TitleTerm(w) => format!("title:{w}"),
            Q::Tag(t) => format!("tag:{t}"),
            Q::Year(y) => format!("year:{y}"),
            Q::Range { lower, upper } => {
                let (open, low) = match lower {
                    None => ('[', "*".to_string()),
                    Some((v, inclusive)) => (if *inclusive { '[' } else { '{' }, v.to_string()),
                };
                let (close, high) = match upper {
                    None => (']', "*".to_string()),
                    Some((v, inclusive)) => (if *inclusive { ']' } else { '}' }, v.to_string()),
                };
                format!("year:{open}{low} TO {high}{close}")
            }
            Q::Compare(op, v) => format!("year:{op}{v}"),
            Q::Set(tags) => format!("tag: IN [{}]", tags.join(" ")),
            Q::Exists { range_form: true } => "year:[* TO *]".into(),
            Q::Exists { range_form: false } => "year:*".into(),
            Q::All => "*".into(),
            Q::Phrase(words, 0) => format!("title:\"{}\"", words.join(" ")),
            Q::Phrase(words, slop) => format!("title:\"{}\"~{slop}", words.join(" ")),
            Q::Prefix(p) => format!("title:{p}*"),
            Q::Fuzzy(w, d) => format!("title:{w}~{d}"),
            Q::And(a, b) => format!("({} AND {})", a.render(), b.render()),
            Q::Or(a, b) => format!("({} OR {})", a.render(), b.render()),
            Q::AndNot(a, b) => format!("({} AND NOT {})", a.render(), b.render()),
            Q::MustMustNot(a, b) => format!("(+{} -{})", a.render(), b.render()),
            Q::OnlyNot(a) => format!("(-{})", a.render()),
            // A boost right after a comparison would read as part of its number.
            Q::Boost(a, b) => format!("({})^{b}", a.render()),
        }
    }

    fn matches(&self, d: &Doc) -> bool {
        let year_in = |lower: &Option<(i64, bool)>, upper: &Option<(i64, bool)>| {
            d.year.is_some_and(|y| {
                lower.is_none_or(|(v, inc)| if inc { y >= v } else { y > v })
                    && upper.is_none_or(|(v, inc)| if inc { y <= v } else { y < v })
            })
        };
        match self {
            Q::Term(w) | Q::TitleTerm(w) => d.title.contains(w),
            Q::Tag(t) => d.tag.as_ref() == Some(t),
            Q::Year(y) => d.year == Some(*y),
            Q::Range { lower, upper } => year_in(lower, upper),
            Q::Compare(op, v) => {
                let (lower, upper) = match *op {
                    ">" => (Some((*v, false)), None),
                    ">=" => (Some((*v, true)), None),
                    "<" => (None, Some((*v, false))),
                    _ => (None, Some((*v, true))),
                };
                year_in(&lower, &upper)
            }
            Q::Set(tags) => d.tag.as_ref().is_some_and(|t| tags.contains(t)),
            Q::Exists { .. } => d.year.is_some(),
            Q::All => true,
            Q::Phrase(words, slop) => phrase_matches(&d.title, words, *slop),
            Q::Prefix(p) => d.indexed.iter().any(|t| t.starts_with(p.as_str())),
            Q::Fuzzy(w, distance) => d.indexed.iter().any(|t| edit_distance(t, w) <= *distance),
            Q::And(a, b) => a.matches(d) && b.matches(d),
            Q::Or(a, b) => a.matches(d) || b.matches(d),
            Q::AndNot(a, b) | Q::MustMustNot(a, b) => a.matches(d) && !b.matches(d),
            Q::OnlyNot(a) => !a.matches(d),
            Q::Boost(a, _) => a.matches(d),
        }
    }
}

/// Exact phrases of any length; with slop, two-term phrases: the second term within `slop`
/// moves of the place right after the first, in either order (as Lucene).
fn phrase_matches(tokens: &[String], words: &[String], slop: u32) -> bool {
    if slop == 0 {
        return tokens
            .windows(words.len())
            .any(|window| window.iter().zip(words).all(|(t, w)| t == w));
    }
    let at = |w: &String| -> Vec<i64> {
        (0..tokens.len())
            .filter(|&i| &tokens[i] == w)
            .map(|i| i as i64)
            .collect()
    };
    let (first, second) = (at(&words[0]), at(&words[1]));
    first.iter().any(|p| {
        second
            .iter()
            .any(|q| (q - 1 - p).unsigned_abs() <= u64::from(slop))
    })
}

/// Levenshtein distance with adjacent transpositions costing one (optimal string alignment),
/// as tantivy's fuzzy term query counts.
fn edit_distance(a: &str, b: &str) -> u32 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i as u32;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j as u32;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = u32::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn word(rng: &mut StdRng) -> String {
    WORDS[rng.gen_range(0..WORDS.len())].to_string()
}

/// A word one or two edits away from a vocabulary word.
fn misspelled(rng: &mut StdRng) -> String {
    let mut chars: Vec<char> = word(rng).chars().collect();
    for _ in 0..rng.gen_range(1..=2) {
        let i = rng.gen_range(0..chars.len());
        match rng.gen_range(0..3) {
            0 => chars[i] = (b'a' + rng.gen_range(0..26u8)) as char,
            1 if chars.len() > 2 => {
                chars.remove(i);
            }
            _ => chars.insert(i, (b'a' + rng.gen_range(0..26u8)) as char),
        }
    }
    chars.into_iter().collect()
}

fn leaf(rng: &mut StdRng) -> Q {
    let year = |rng: &mut StdRng| rng.gen_range(1985..2035);
    match rng.gen_range(0..14) {
        0 => Q::Term(word(rng)),
        1 => Q::TitleTerm(word(rng)),
        2 => Q::Tag(TAGS[rng.gen_range(0..TAGS.len())].to_string()),
        3 => Q::Year(year(rng)),
        4 | 5 => {
            let a = year(rng);
            let b = year(rng);
            let bound =
                |rng: &mut StdRng, v: i64| rng.gen_bool(0.8).then(|| (v, rng.gen_bool(0.5)));
            Q::Range {
                lower: bound(rng, a.min(b)),
                upper: bound(rng, a.max(b)),
            }
        }
        6 => Q::Compare([">", ">=", "<", "<="][rng.gen_range(0..4)], year(rng)),
        7 => Q::Set(
            TAGS.iter()
                .filter(|_| rng.gen_bool(0.5))
                .map(|t| t.to_string())
                .chain(std::iter::once("purple".to_string()))
                .collect(),
        ),
        8 => Q::Exists {
            range_form: rng.gen_bool(0.5),
        },
        9 => Q::All,
        10 => {
            let words = (0..rng.gen_range(2..=3)).map(|_| word(rng)).collect();
            Q::Phrase(words, 0)
        }
        11 => Q::Phrase(vec![word(rng), word(rng)], rng.gen_range(1..=4)),
        12 => {
            let w = word(rng);
            Q::Prefix(w[..rng.gen_range(1..=3)].to_string())
        }
        _ => Q::Fuzzy(misspelled(rng), rng.gen_range(1..=2)),
    }
}

fn query(rng: &mut StdRng, depth: u32) -> Q {
    if depth == 0 || rng.gen_bool(0.35) {
        return leaf(rng);
    }
    let mut sub = || Box::new(query(rng, depth - 1));
    let (a, b) = (sub(), sub());
    match rng.gen_range(0..6) {
        0 => Q::And(a, b),
        1 => Q::Or(a, b),
        2 => Q::AndNot(a, b),
        3 => Q::MustMustNot(a, b),
        4 => Q::OnlyNot(a),
        _ => Q::Boost(a, rng.gen_range(1..5)),
    }
}

#[test]
fn every_query_form_matches_a_brute_force_evaluation() {
    let seed: u64 = std::env::var("PRISM_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let queries: usize = std::env::var("PRISM_DIFF_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    eprintln!("differential query test: seed {seed} (PRISM_DIFF_SEED={seed} replays it), {queries} queries");
    let mut rng = StdRng::seed_from_u64(seed);
    let schema = Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"d","fields":{"title":{"type":"text"},"tag":{"type":"keyword"},"year":{"type":"i64"}}}"#,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), schema.clone(), ShardConfig::default()).unwrap();
    let analyzers = tantivy::tokenizer::TokenizerManager::default();
    crate::analysis::register(&analyzers);
    let mut en = analyzers.get("en").unwrap();
    let mut analyzed = |text: &str| {
        let mut out = Vec::new();
        en.token_stream(text)
            .process(&mut |t| out.push(t.text.clone()));
        out
    };
    let docs: Vec<Doc> = (0..300)
        .map(|i| {
            let title: Vec<String> = (0..rng.gen_range(0..9)).map(|_| word(&mut rng)).collect();
            (i, title)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(i, title)| Doc {
            id: format!("d{i}"),
            indexed: analyzed(&title.join(" ")),
            title,
            tag: rng
                .gen_bool(0.8)
                .then(|| TAGS[rng.gen_range(0..TAGS.len())].to_string()),
            year: rng.gen_bool(0.85).then(|| rng.gen_range(1990..2030)),
        })
        .collect();
    let ops: Vec<Op> = docs
        .iter()
        .map(|d| {
            let mut fields = serde_json::Map::new();
            if !d.title.is_empty() {
                fields.insert("title".into(), json!(d.title.join(" ")));
            }
            if let Some(t) = &d.tag {
                fields.insert("tag".into(), json!(t));
            }
            if let Some(y) = d.year {
                fields.insert("year".into(), json!(y));
            }
            Op::Upsert(Arc::new(
                schema
                    .prepare_document(json!({"id": d.id, "fields": fields}))
                    .unwrap(),
            ))
        })
        .collect();
    // Two segments, so that every form also runs across segments.
    let (first, second) = ops.split_at(150);
    shard.write_blocking(first.to_vec()).unwrap();
    shard.refresh_blocking().unwrap();
    shard.write_blocking(second.to_vec()).unwrap();
    shard.refresh_blocking().unwrap();

    let mut forms_seen = BTreeSet::new();
    for n in 0..queries {
        let q = query(&mut rng, 3);
        let text = q.render();
        let expected: BTreeSet<&str> = docs
            .iter()
            .filter(|d| q.matches(d))
            .map(|d| d.id.as_str())
            .collect();
        let as_query = shard.search(&SearchRequest {
            query: Some(text.clone()),
            limit: 1000,
            ..SearchRequest::default()
        });
        let as_filter = shard.search(&SearchRequest {
            filter: Some(text.clone()),
            limit: 1000,
            ..SearchRequest::default()
        });
        for (how, answer) in [("query", as_query), ("filter", as_filter)] {
            let answer = answer.unwrap_or_else(|e| {
                panic!("seed {seed}, query #{n} as {how}: {text:?} was refused: {e}")
            });
            let got: BTreeSet<&str> = answer.results.iter().map(|h| h.id.as_str()).collect();
            assert_eq!(
                got, expected,
                "seed {seed}, query #{n} as {how}: {text:?} ({q:?})"
            );
            assert_eq!(
                answer.total as usize,
                expected.len(),
                "seed {seed}, query #{n}: total of {text:?}"
            );
            assert!(
                answer.results.iter().all(|h| h.score.is_finite()),
                "seed {seed}: {text:?}"
            );
        }
        forms_seen.insert(
            format!("{q:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    eprintln!("forms checked: {forms_seen:?}");
}

/// Forms that tantivy would get wrong silently are refused with the reason.
#[test]
fn wildcards_inside_terms_and_oversized_distances_are_refused() {
    let schema = Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"d","fields":{"title":{"type":"text"},"year":{"type":"i64"}}}"#,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), schema, ShardConfig::default()).unwrap();
    for (text, reason) in [
        ("te?t", "wildcard"),
        ("title:fo*o", "wildcard"),
        ("apple~3", "edit distance"),
        ("apple~x", "fuzzy term"),
        ("gra*~1", "not both"),
        ("year:19*", "text or keyword"),
        ("apple^2000000000", "boost"),
        ("((apple^100000)^100000)^100000", "boost"),
        ("\"apple banana\"~300", "slop"),
        ("title:(", "does not parse"),
    ] {
        let refused = shard
            .search(&SearchRequest {
                query: Some(text.into()),
                limit: 10,
                ..SearchRequest::default()
            })
            .unwrap_err();
        assert!(
            matches!(&refused, Error::InvalidQuery(m) if m.contains(reason)),
            "{text}: {refused}"
        );
    }
}
