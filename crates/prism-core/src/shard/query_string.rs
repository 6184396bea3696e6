//! The query-string syntax (`query`, `filter`) turned into a tantivy query. tantivy's grammar
//! parses it; this module builds the query from the parsed tree itself, so that every form it
//! accepts means what `docs/api.md` says, and forms tantivy would silently get wrong are
//! refused with the reason:
//! - a group of exclusions only (`-a`, `a AND NOT b`) matches every document but those, as in
//!   Elasticsearch (tantivy matched nothing);
//! - `field:[* TO *]` matches documents that have the field (tantivy dropped it and matched
//!   nothing);
//! - `term~N` is a fuzzy term (edit distance up to 2), as in Lucene (tantivy searched the
//!   phrase "term N");
//! - `term*` is a prefix, with no limit on the terms it expands to (tantivy searched the bare
//!   term); a `*` or `?` anywhere else in a term is refused (tantivy split the term into a
//!   phrase of its pieces);
//! - a phrase slop above [`MAX_PHRASE_SLOP`] is refused (tantivy keeps slops in a byte).

use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyQuery, FuzzyTermQuery, Occur, Query, QueryParser,
};
use tantivy::query_grammar::{
    Delimiter, Occur as InputOccur, UserInputAst, UserInputBound, UserInputLeaf,
};

use tantivy::schema::{Field, FieldType, Schema};
use tantivy::Term;

use crate::error::{Error, Result};
use crate::search::MAX_PHRASE_SLOP;

/// The largest edit distance of a fuzzy term (`term~2`).
pub(crate) const MAX_FUZZY_DISTANCE: u32 = 2;

/// The longest text of a prefix or fuzzy term, in characters: tantivy builds an automaton
/// whose size grows with the text's length times its distinct characters.
pub(crate) const MAX_EXPANDED_TERM_CHARS: usize = 256;

/// tantivy's parser, with what it does not expose: the schema and the default fields.
pub(crate) struct Parser {
    pub parser: QueryParser,
    pub schema: Schema,
    pub default_fields: Vec<Field>,
}

/// Parses `text` with `parser`'s fields and tokenizers. `what` names the input in errors.
pub(crate) fn parse(parser: &Parser, text: &str, what: &str) -> Result<Box<dyn Query>> {
    let invalid = |message: String| Error::InvalidQuery(format!("{what}: {message}"));
    let ast = tantivy::query_grammar::parse_query(text).map_err(|_| {
        invalid("the query string does not parse; see docs/api.md for its syntax".into())
    })?;
    build(parser, ast, 1.0, &invalid)
}

/// The largest product of the boosts around one clause: BM25 scores stay far from f32's
/// range (a clause scores in the tens; 1,024 clauses at 1e9 sum to about 1e13).
pub(crate) const MAX_BOOST: f64 = 1e9;

fn build(
    parser: &Parser,
    ast: UserInputAst,
    boosted: f64,
    invalid: &dyn Fn(String) -> Error,
) -> Result<Box<dyn Query>> {
    match ast {
        UserInputAst::Clause(clauses) => {
            if clauses.is_empty() {
                return Err(invalid(
                    "an empty group () matches nothing; remove it".into(),
                ));
            }
            let mut built = Vec::with_capacity(clauses.len() + 1);
            for (occur, clause) in clauses {
                let occur = match occur {
                    Some(InputOccur::Must) => Occur::Must,
                    Some(InputOccur::MustNot) => Occur::MustNot,
                    Some(InputOccur::Should) | None => Occur::Should,
                };
                let query = build(parser, clause, boosted, invalid)?;
                // A clause of stop words only matches nothing and is dropped, as tantivy's
                // own parser does: kept, it would be a clause of another kind than terms,
                // and a union of terms would lose block-max WAND.
                if !query.is::<EmptyQuery>() {
                    built.push((occur, query));
                }
            }
            if built.is_empty() {
                return Ok(Box::new(EmptyQuery));
            }
            if built.iter().all(|(occur, _)| *occur == Occur::MustNot) {
                // Exclusions alone exclude from every document.
                built.push((Occur::Must, Box::new(AllQuery)));
            }
            if let [(Occur::Must | Occur::Should, _)] = built.as_slice() {
                return Ok(built.pop().expect("one clause").1);
            }
            Ok(Box::new(BooleanQuery::new(built)))
        }
        UserInputAst::Boost(inner, boost) => {
            let boost = boost.0;
            let total = boosted * boost;
            if !(0.0..=MAX_BOOST).contains(&boost) || total > MAX_BOOST {
                return Err(invalid(format!(
                    "a boost must be from 0 to {MAX_BOOST:e}, nested boosts included (got {boost}, {total:e} with those around it)"
                )));
            }
            Ok(Box::new(BoostQuery::new(
                build(parser, *inner, total, invalid)?,
                boost as f32,
            )))
        }
        UserInputAst::Leaf(leaf) => build_leaf(parser, *leaf, invalid),
    }
}

fn build_leaf(
    parser: &Parser,
    leaf: UserInputLeaf,
    invalid: &dyn Fn(String) -> Error,
) -> Result<Box<dyn Query>> {
    let leaf = match leaf {
        UserInputLeaf::Range {
            field: Some(field),
            lower: UserInputBound::Unbounded,
            upper: UserInputBound::Unbounded,
        } => UserInputLeaf::Exists { field },
        UserInputLeaf::Literal(mut literal) => {
            let quoted = literal.delimiter != Delimiter::None;
            if !quoted {
                // The grammar reads `~N` as slop after a quoted phrase only: on a bare term it
                // stays in the term's text (and the tokenizer would make "term N" a phrase).
                let (text, fuzzy_distance) = match literal.phrase.rsplit_once('~') {
                    Some((term, digits)) if !term.is_empty() => {
                        let distance = if digits.is_empty() {
                            MAX_FUZZY_DISTANCE
                        } else {
                            digits.parse::<u32>().map_err(|_| {
                                invalid(format!(
                                    "{}: a fuzzy term is term~ or term~N with N from 0 to {MAX_FUZZY_DISTANCE}",
                                    literal.phrase
                                ))
                            })?
                        };
                        (term.to_string(), Some(distance))
                    }
                    _ => (literal.phrase.clone(), None),
                };
                literal.slop = fuzzy_distance.unwrap_or(0);
                let (body, prefix) = match text.strip_suffix('*') {
                    Some(body) if !body.is_empty() => (body.to_string(), true),
                    _ => (text.clone(), false),
                };
                if let Some(at) = body.find(['*', '?']) {
                    return Err(invalid(format!(
                        "{:?} has a wildcard inside it: only a trailing * (a prefix, such as graph*) is supported",
                        &body[..=at]
                    )));
                }
                let distance = literal.slop;
                if prefix || fuzzy_distance.is_some() {
                    if prefix && distance > 0 {
                        return Err(invalid(format!(
                            "{}: a term is a prefix (*) or fuzzy (~N), not both",
                            literal.phrase
                        )));
                    }
                    if distance > MAX_FUZZY_DISTANCE {
                        return Err(invalid(format!(
                            "{}~{distance}: a fuzzy term's edit distance is at most {MAX_FUZZY_DISTANCE}",
                            literal.phrase
                        )));
                    }
                    if body.chars().count() > MAX_EXPANDED_TERM_CHARS {
                        return Err(invalid(format!(
                            "a prefix or fuzzy term is at most {MAX_EXPANDED_TERM_CHARS} characters long"
                        )));
                    }
                    let kind = if prefix {
                        "prefix (term*)"
                    } else {
                        "fuzzy term (term~N)"
                    };
                    let terms = expansion_terms(parser, literal.field_name.as_deref(), &body)
                        .map_err(|why| invalid(format!("{}: a {kind} {why}", literal.phrase)))?;
                    let mut clauses: Vec<(Occur, Box<dyn Query>)> = terms
                        .into_iter()
                        .map(|term| -> (Occur, Box<dyn Query>) {
                            let query: Box<dyn Query> = if prefix {
                                Box::new(FuzzyTermQuery::new_prefix(term, 0, true))
                            } else {
                                Box::new(FuzzyTermQuery::new(term, distance as u8, true))
                            };
                            (Occur::Should, query)
                        })
                        .collect();
                    return Ok(match clauses.len() {
                        1 => clauses.pop().expect("one").1,
                        _ => Box::new(BooleanQuery::new(clauses)),
                    });
                }
            }
            if u64::from(literal.slop) > MAX_PHRASE_SLOP {
                return Err(invalid(format!(
                    "a phrase slop of {} is over the most, {MAX_PHRASE_SLOP}",
                    literal.slop
                )));
            }
            UserInputLeaf::Literal(literal)
        }
        other => other,
    };
    parser
        .parser
        .build_query_from_user_input_ast(UserInputAst::Leaf(Box::new(leaf)))
        .map_err(|e| invalid(e.to_string()))
}

/// The terms a prefix or fuzzy term expands from: `text` in the named field, or in each
/// default field. As in Elasticsearch, the text is only normalized (lower-cased on text
/// fields, as written on keyword fields), never stemmed or stop-worded: it is matched against
/// the terms the index holds.
fn expansion_terms(
    parser: &Parser,
    field: Option<&str>,
    text: &str,
) -> std::result::Result<Vec<Term>, String> {
    let fields = match field {
        Some(name) => vec![parser
            .schema
            .get_field(name)
            .map_err(|_| format!("names field {name:?}, which is not in the schema"))?],
        None => parser.default_fields.clone(),
    };
    if text.split_whitespace().count() != 1 {
        return Err("must be one word".into());
    }
    fields
        .into_iter()
        .map(|field| {
            let entry = parser.schema.get_field_entry(field);
            let indexing = match entry.field_type() {
                FieldType::Str(options) => options.get_indexing_options(),
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "needs an indexed text or keyword field, not {:?}",
                    entry.name()
                )
            })?;
            let normalized = if indexing.tokenizer() == "raw" {
                text.to_string()
            } else {
                text.to_lowercase()
            };
            Ok(Term::from_field_text(field, &normalized))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tantivy::query::TermQuery;
    use tantivy::schema::{TextFieldIndexing, TextOptions};
    use tantivy::tokenizer::TokenizerManager;

    use super::*;

    fn parser() -> Parser {
        let mut builder = Schema::builder();
        let text = builder.add_text_field(
            "text",
            TextOptions::default()
                .set_indexing_options(TextFieldIndexing::default().set_tokenizer("en")),
        );
        let schema = builder.build();
        let tokenizers = TokenizerManager::default();
        crate::analysis::register(&tokenizers);
        Parser {
            parser: QueryParser::new(schema.clone(), vec![text], tokenizers),
            schema,
            default_fields: vec![text],
        }
    }

    /// Stop words leave no clause behind: a union of terms stays a union of terms only, the
    /// shape tantivy prunes with block-max WAND (a search of "the fox" cost a full scan).
    #[test]
    fn clauses_of_stop_words_only_are_dropped() {
        let parser = parser();
        let query = parse(&parser, "the fox", "query").unwrap();
        assert!(query.is::<TermQuery>(), "{query:?}");
        let query = parse(&parser, "the fox of the hills", "query").unwrap();
        let boolean = query.downcast_ref::<BooleanQuery>().expect("a union");
        assert_eq!(boolean.clauses().len(), 2, "{boolean:?}");
        assert!(boolean.clauses().iter().all(|(_, q)| q.is::<TermQuery>()));
        assert!(parse(&parser, "the of", "query")
            .unwrap()
            .is::<EmptyQuery>());
    }
}
