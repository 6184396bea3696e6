//! Search and real-time GET over a shard copy's last refreshed state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{AggContextParams, DistributedAggregationCollector};
use tantivy::collector::{Collector, Count, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::{
    AllQuery, Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Value as _};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use super::bounded::BoundedQuery;
use super::ids::{id_hashes, IdHashes};
use super::query_string;
use super::top::{prunes_exactly, Ranked, Scan, TopRanked};
use super::Shared;
use crate::error::{Error, Result};
use crate::schema::{internal, FieldType};
use crate::search::budget::SearchBudget;
use crate::search::merge::merge_page;
use crate::search::plan::{SearchPlan, ShardWindows};
use crate::search::{
    DocRef, HighlightRequest, Hit, RankedDoc, SearchRequest, SearchResponse, ShardHits, VectorQuery,
};
use crate::stats::{term_key, GlobalStatistics, TermStatistics};
use crate::vector::{similarity, VectorIndex};

/// Below this many allowed candidates a filtered vector search is computed exactly: a graph
/// walk restricted to so few nodes would miss neighbours.
const EXACT_SEARCH_THRESHOLD: usize = 2_000;

/// The live document versions of one searcher generation: version key → address.
pub(crate) struct LiveKeys {
    generation: u64,
    by_key: HashMap<u64, DocAddress>,
}

/// Collects (version key, address) of matching documents.
struct KeyCollector;

struct KeySegmentCollector {
    segment: SegmentOrdinal,
    keys: Column<u64>,
    out: Vec<(u64, DocAddress)>,
}

impl Collector for KeyCollector {
    type Fruit = Vec<(u64, DocAddress)>;
    type Child = KeySegmentCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        Ok(KeySegmentCollector {
            segment,
            keys: reader.fast_fields().u64(internal::KEY)?,
            out: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for KeySegmentCollector {
    type Fruit = Vec<(u64, DocAddress)>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(key) = self.keys.first(doc) {
            self.out.push((key, DocAddress::new(self.segment, doc)));
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.out
    }
}

fn live_keys(shared: &Shared, searcher: &Searcher) -> Result<Arc<LiveKeys>> {
    let generation = searcher.generation().generation_id();
    let mut cache = shared.live_keys.lock();
    if let Some(live) = cache.as_ref().filter(|l| l.generation == generation) {
        return Ok(live.clone());
    }
    let by_key = searcher
        .search(&AllQuery, &KeyCollector)?
        .into_iter()
        .collect();
    let live = Arc::new(LiveKeys { generation, by_key });
    *cache = Some(live.clone());
    Ok(live)
}

fn invalid_query(e: impl std::fmt::Display) -> Error {
    Error::InvalidQuery(e.to_string())
}

/// Maps tantivy's errors at query time: a bad request is the caller's fault, I/O is ours.
fn query_error(e: tantivy::TantivyError) -> Error {
    use tantivy::TantivyError as T;
    match e {
        T::InvalidArgument(_)
        | T::SchemaError(_)
        | T::FieldNotFound(_)
        | T::AggregationError(_) => Error::InvalidQuery(e.to_string()),
        other => Error::Tantivy(other),
    }
}

struct Plan<'a> {
    text: Option<Box<dyn Query>>,
    filter: Option<Box<dyn Query>>,
    vector: Option<(&'a str, &'a VectorIndex, Vec<f32>)>,
}

fn parser(shared: &Shared, fields: &[&str]) -> Result<query_string::Parser> {
    let mut targets = Vec::new();
    for name in fields {
        let def =
            shared.schema.fields.get(*name).ok_or_else(|| {
                Error::InvalidQuery(format!("field {name:?} is not in the schema"))
            })?;
        if !matches!(def.field_type, FieldType::Text | FieldType::Keyword) || !def.indexed {
            return Err(Error::InvalidQuery(format!(
                "field {name:?} is not an indexed text or keyword field"
            )));
        }
        targets.push(shared.fields.user[*name]);
    }
    Ok(query_string::Parser {
        parser: QueryParser::for_index(&shared.index, targets.clone()),
        schema: shared.index.schema(),
        default_fields: targets,
    })
}

fn plan<'a>(shared: &'a Shared, request: &'a SearchRequest) -> Result<Plan<'a>> {
    let text_fields = shared.schema.text_fields();
    let text = match request.query.as_deref().map(str::trim) {
        Some(q) if !q.is_empty() => {
            let fields: Vec<&str> = match &request.fields {
                Some(f) if !f.is_empty() => f.iter().map(String::as_str).collect(),
                _ => text_fields.clone(),
            };
            if fields.is_empty() {
                return Err(Error::InvalidQuery(
                    "the collection has no indexed text field to search; name fields with \"fields\" or use a filter".into(),
                ));
            }
            Some(query_string::parse(&parser(shared, &fields)?, q, "query")?)
        }
        _ => None,
    };
    let filter = match request.filter.as_deref().map(str::trim) {
        Some(f) if !f.is_empty() => Some(query_string::parse(
            &parser(shared, &text_fields)?,
            f,
            "filter",
        )?),
        _ => None,
    };
    let vector = match &request.vector {
        None => None,
        Some(vq) => {
            let (field, values) = match vq {
                VectorQuery::Field { field, values } => (field.as_str(), values),
                VectorQuery::Values(values) => {
                    let mut names = shared.vectors.keys();
                    match (names.next(), names.next()) {
                        (Some(only), None) => (only.as_str(), values),
                        (None, _) => {
                            return Err(Error::InvalidQuery(
                                "the collection has no vector field".into(),
                            ))
                        }
                        _ => {
                            return Err(Error::InvalidQuery(
                                "the collection has several vector fields: use {\"field\": ..., \"values\": [...]}".into(),
                            ))
                        }
                    }
                }
            };
            let (name, index) = shared
                .vectors
                .get_key_value(field)
                .ok_or_else(|| Error::InvalidQuery(format!("{field:?} is not a vector field")))?;
            let dim = index.params().dimension;
            if values.len() != dim {
                return Err(Error::InvalidQuery(format!(
                    "vector for {field:?} must have {dim} dimensions, got {}",
                    values.len()
                )));
            }
            let values: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(Error::InvalidQuery(
                    "vector values must be finite 32-bit floats".into(),
                ));
            }
            crate::vector::check_vector_magnitude(&values, index.params().distance)
                .map_err(|why| Error::InvalidQuery(format!("vector for {field:?}: {why}")))?;
            Some((name.as_str(), index, values))
        }
    };
    Ok(Plan {
        text,
        filter,
        vector,
    })
}

/// `query AND filter`, where the filter adds nothing to the score.
fn with_filter(query: Box<dyn Query>, filter: &Option<Box<dyn Query>>) -> Box<dyn Query> {
    match filter {
        None => query,
        Some(f) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, query),
            (
                Occur::Must,
                Box::new(ConstScoreQuery::new(f.box_clone(), 0.0)),
            ),
        ])),
    }
}

fn has_vector(shared: &Shared, field: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(shared.fields.vectors, field),
        IndexRecordOption::Basic,
    ))
}

/// The BM25 statistics of this shard for the terms of `request`'s text query.
pub(crate) fn term_statistics(
    shared: &Shared,
    request: &SearchRequest,
) -> Result<(TermStatistics, String)> {
    let plan = plan(shared, request)?;
    let searcher = shared.reader.searcher();
    let schema = shared.index.schema();
    let mut stats = TermStatistics {
        total_docs: Bm25StatisticsProvider::total_num_docs(&searcher)?,
        ..Default::default()
    };
    for name in shared.schema.text_fields() {
        let field = shared.fields.user[name];
        stats.field_tokens.insert(
            name.to_string(),
            Bm25StatisticsProvider::total_num_tokens(&searcher, field)?,
        );
    }
    if let Some(text) = &plan.text {
        let mut terms = Vec::new();
        text.query_terms(&mut |term, _| terms.push(term.clone()));
        for term in terms {
            if schema
                .get_field_entry(term.field())
                .field_type()
                .is_indexed()
            {
                stats.doc_freqs.insert(
                    term_key(&term),
                    Bm25StatisticsProvider::doc_freq(&searcher, &term)?,
                );
            }
        }
    }
    Ok((stats, searcher_generation(shared, &searcher)))
}

/// The ranked lists of one search, before stored fields are loaded, each in rank order.
struct Collected {
    total: u64,
    aggregations: Option<IntermediateAggregationResults>,
    /// The text list, or the only list of a filter or match-all query.
    text: Vec<Ranked>,
    vector: Vec<Ranked>,
}

/// Every aggregated field must be a fast field of the schema: tantivy itself answers an
/// unknown field with empty buckets.
fn check_aggregated_fields(shared: &Shared, aggs: &Aggregations) -> Result<()> {
    for name in tantivy::aggregation::agg_req::get_fast_field_names(aggs) {
        match shared.schema.fields.get(&name) {
            None => {
                return Err(Error::InvalidQuery(format!(
                    "aggregations: field {name:?} is not in the schema"
                )))
            }
            Some(def) if def.field_type == FieldType::Vector || !def.is_fast() => {
                return Err(Error::InvalidQuery(format!(
                    "aggregations: field {name:?} is not a fast field; aggregate keyword, numeric, bool or date fields, or text fields declared with \"fast\": true"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Runs the query: the true count, the aggregations (unfinished), and the ranked lists.
fn collect(
    shared: &Shared,
    searcher: &Searcher,
    plan: &Plan<'_>,
    request: &SearchRequest,
    provider: &dyn Bm25StatisticsProvider,
    windows: ShardWindows,
    budget: &Arc<SearchBudget>,
) -> Result<Collected> {
    // Every query below runs bounded: it stops when the budget is spent.
    let bounded = |query: &dyn Query| BoundedQuery::around(query, budget);
    let aggs = match &request.aggregations {
        None => None,
        Some(v) => {
            let aggs = serde_json::from_value::<Aggregations>(v.clone())
                .map_err(|e| Error::InvalidQuery(format!("aggregations: {e}")))?;
            check_aggregated_fields(shared, &aggs)?;
            Some(aggs)
        }
    };
    // Always collect unfinished results: a shard answering a coordinator ships them as they
    // are, a local search finishes them itself (what tantivy's AggregationCollector does).
    let agg_collector = aggs.map(|a| {
        DistributedAggregationCollector::from_aggs(
            a,
            AggContextParams::new(
                budget.aggregation_limits(),
                shared.index.tokenizers().clone(),
            ),
        )
    });
    // The query whose matches `total` counts and aggregations run over.
    let matching: Box<dyn Query> = match (&plan.text, &plan.vector) {
        (Some(t), None) => t.box_clone(),
        (None, Some((field, _, _))) => has_vector(shared, field),
        (Some(t), Some((field, _, _))) => Box::new(BooleanQuery::new(vec![
            (Occur::Should, t.box_clone()),
            (
                Occur::Should,
                Box::new(ConstScoreQuery::new(has_vector(shared, field), 0.0)),
            ),
        ])),
        (None, None) => Box::new(AllQuery),
    };
    let matching = with_filter(matching, &plan.filter);
    let is_term = matching.as_ref().is::<TermQuery>();
    let matching = bounded(matching.as_ref());

    let hashes = id_hashes(shared, searcher)?;
    let prune = plan.text.as_deref().is_none_or(prunes_exactly);
    let Some((field, vindex, values)) = &plan.vector else {
        let scan = match (&plan.text, is_term) {
            // Match-all or filter-only: every match scores alike.
            (None, _) => Scan::ConstantScore,
            (Some(_), true) => Scan::Pruned,
            (Some(_), false) => Scan::Full,
        };
        let top = TopRanked::new(windows.text_offset, windows.text_limit, hashes, scan);
        // A pass for the count beside one for the top pays off where neither scores every
        // match: a lone term's count is its document frequency and WAND prunes its top
        // (hot_paths: a common term 2.6x faster), and a constant-score top reads blocks of
        // ids unscored. Otherwise the count is a pass over every match, and one unpruned
        // pass that also collects the top beats it plus a pruned one (two dense terms:
        // 1.3x slower).
        let (text, count, aggregations) = if scan != Scan::Full && agg_collector.is_none() {
            // The count runs without scoring, the top documents by `scan`.
            let count = searcher
                .search_with_statistics_provider(&matching, &Count, provider)
                .map_err(query_error)?;
            let text = searcher
                .search_with_statistics_provider(&matching, &top, provider)
                .map_err(query_error)?;
            (text, count, None)
        } else {
            // Aggregations or the count visit every match anyway: one pass feeds all.
            searcher
                .search_with_statistics_provider(&matching, &(top, Count, agg_collector), provider)
                .map_err(query_error)?
        };
        return Ok(Collected {
            total: count as u64,
            aggregations,
            text,
            vector: Vec::new(),
        });
    };
    let (count, aggregations) = match (&plan.text, agg_collector) {
        // Without aggregations, text ∪ documents with a vector is counted as two disjoint
        // parts: a pass over the union would visit every document with a vector, most of a
        // collection, where the two parts cost a term's document count and the text matches.
        (Some(text), None) => {
            let with_vector = with_filter(has_vector(shared, field), &plan.filter);
            let text_only: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
                (Occur::Must, text.box_clone()),
                (Occur::MustNot, has_vector(shared, field)),
            ]));
            let text_only = with_filter(text_only, &plan.filter);
            let with_vector = searcher
                .search(&bounded(with_vector.as_ref()), &Count)
                .map_err(query_error)?;
            let text_only = searcher
                .search(&bounded(text_only.as_ref()), &Count)
                .map_err(query_error)?;
            (with_vector + text_only, None)
        }
        (_, agg_collector) => searcher
            .search(&matching, &(Count, agg_collector))
            .map_err(query_error)?,
    };
    let live = live_keys(shared, searcher)?;
    let vector = vector_search(
        searcher,
        &live,
        &hashes,
        vindex,
        values,
        windows.vector_k,
        &plan.filter.as_deref().map(bounded),
    )?;
    let text = match &plan.text {
        None => Vec::new(),
        Some(text) => {
            let text_query = bounded(with_filter(text.box_clone(), &plan.filter).as_ref());
            searcher
                .search_with_statistics_provider(
                    &text_query,
                    &TopRanked::new(
                        0,
                        windows.text_limit,
                        hashes,
                        if prune { Scan::Pruned } else { Scan::Full },
                    ),
                    provider,
                )
                .map_err(query_error)?
        }
    };
    Ok(Collected {
        total: count as u64,
        aggregations,
        text,
        vector,
    })
}

fn statistics_provider<'a>(
    global: Option<&'a TermStatistics>,
    schema: &'a tantivy::schema::Schema,
    searcher: &'a Searcher,
) -> Box<dyn Bm25StatisticsProvider + 'a> {
    match global {
        Some(stats) => Box::new(GlobalStatistics {
            stats,
            schema,
            local: searcher,
        }),
        None => Box::new(searcher.clone()),
    }
}

/// One shard's query phase on its current searcher: the parsed request, the searcher, the
/// ranked lists as the coordinator merges them, and the unfinished aggregations.
struct Phase<'a> {
    parsed: Plan<'a>,
    searcher: Searcher,
    hits: ShardHits,
    aggregations: Option<IntermediateAggregationResults>,
}

/// Validates and plans `request`, then collects its lists with `windows` on the current
/// searcher.
fn run_query<'a>(
    shared: &'a Shared,
    request: &'a SearchRequest,
    global: Option<&TermStatistics>,
    windows: ShardWindows,
    budget: &Arc<SearchBudget>,
) -> Result<Phase<'a>> {
    request.validate()?;
    let parsed = plan(shared, request)?;
    let searcher = shared.reader.searcher();
    let schema = shared.index.schema();
    let provider = statistics_provider(global, &schema, &searcher);
    let collected = collect(
        shared,
        &searcher,
        &parsed,
        request,
        provider.as_ref(),
        windows,
        budget,
    )?;
    budget.check_cancelled()?;
    drop(provider); // it borrows the searcher returned below
    let refs = |list: Vec<Ranked>| -> Vec<RankedDoc> {
        list.into_iter()
            .map(|hit| RankedDoc {
                doc: ((hit.address.segment_ord as u64) << 32) | hit.address.doc_id as u64,
                score: hit.score,
                id_hash: hit.id_hash,
            })
            .collect()
    };
    let hits = ShardHits {
        total: collected.total,
        text: refs(collected.text),
        vector: refs(collected.vector),
        intermediate_aggregations: None,
        generation: searcher_generation(shared, &searcher),
        timed_out: budget.timed_out(),
    };
    Ok(Phase {
        parsed,
        searcher,
        hits,
        aggregations: collected
            .aggregations
            .filter(|_| request.aggregations.is_some()),
    })
}

/// A search of this shard alone: the plan over one shard, that is its query phase, the
/// merge of its one answer, and the fetch of the page, as a federated search runs them over
/// many.
pub(crate) fn search(
    shared: &Shared,
    request: &SearchRequest,
    budget: &Arc<SearchBudget>,
) -> Result<SearchResponse> {
    let started = Instant::now();
    let plan = SearchPlan::new(request, 1, 1.0);
    let phase = run_query(shared, request, None, plan.windows, budget)?;
    let page = merge_page(
        &[(0, &phase.hits)],
        &plan.ranking,
        plan.merge_offset,
        plan.limit,
    );
    let docs: Vec<DocRef> = page.iter().map(|hit| hit.doc).collect();
    let mut results = fetch_from(
        shared,
        &phase.searcher,
        request,
        phase.parsed.text.as_deref(),
        &docs,
    )?;
    for (result, hit) in results.iter_mut().zip(&page) {
        result.score = hit.score;
    }
    let aggregations = match (phase.aggregations, &request.aggregations) {
        (Some(partial), Some(aggs)) => {
            let aggs: Aggregations = serde_json::from_value(aggs.clone()).map_err(invalid_query)?;
            let finished = partial
                .into_final_result(aggs, budget.aggregation_limits())
                .map_err(query_error)?;
            let mut answer = serde_json::to_value(finished).map_err(invalid_query)?;
            let asked = request.aggregations.as_ref().unwrap_or(&Value::Null);
            crate::search::decode_top_hits_sort(asked, &mut answer, &|field| {
                shared.schema.fields.get(field).map(|d| d.field_type)
            });
            Some(answer)
        }
        _ => None,
    };
    Ok(SearchResponse {
        results,
        total: phase.hits.total,
        latency_ms: started.elapsed().as_millis() as u64,
        timed_out: phase.hits.timed_out,
        aggregations,
    })
}

/// The query phase of a federated search: this shard's ranked documents for a coordinator to
/// merge, scored with `global` statistics when given, each list as long as `windows` says
/// (the coordinator's [`SearchPlan`]), aggregations unfinished.
pub(crate) fn query_phase(
    shared: &Shared,
    request: &SearchRequest,
    global: Option<&TermStatistics>,
    windows: ShardWindows,
    budget: &Arc<SearchBudget>,
) -> Result<ShardHits> {
    let phase = run_query(shared, request, global, windows, budget)?;
    let mut hits = phase.hits;
    hits.intermediate_aggregations = phase
        .aggregations
        .map(|partial| postcard::to_stdvec(&partial).map_err(invalid_query))
        .transpose()?;
    keep_for_fetch(shared, phase.searcher);
    Ok(hits)
}

/// How many recent searcher generations stay readable for fetch phases: a fetch normally
/// follows its query phase within milliseconds, and a refresh happens at most every
/// `refresh_interval`.
const FETCHABLE_GENERATIONS: usize = 8;

fn keep_for_fetch(shared: &Shared, searcher: Searcher) {
    let mut recent = shared.recent_searchers.lock();
    let id = searcher.generation().generation_id();
    if recent.iter().any(|s| s.generation().generation_id() == id) {
        return;
    }
    recent.push_back(searcher);
    while recent.len() > FETCHABLE_GENERATIONS {
        recent.pop_front();
    }
}

pub(crate) fn searcher_generation(shared: &Shared, searcher: &Searcher) -> String {
    format!(
        "{:016x}-{}",
        shared.instance,
        searcher.generation().generation_id()
    )
}

/// The fetch phase: stored fields and highlights of documents the query phase ranked, read
/// from the very searcher that ranked them. Scores are left at zero for the coordinator to
/// fill.
pub(crate) fn fetch(
    shared: &Shared,
    request: &SearchRequest,
    generation: &str,
    docs: &[DocRef],
) -> Result<Vec<Hit>> {
    let parsed = plan(shared, request)?;
    let searcher = shared
        .recent_searchers
        .lock()
        .iter()
        .find(|s| searcher_generation(shared, s) == generation)
        .cloned()
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "searcher generation {generation} is no longer open (more than {FETCHABLE_GENERATIONS} refreshes since the query phase); run the search again"
            ))
        })?;
    fetch_from(shared, &searcher, request, parsed.text.as_deref(), docs)
}

/// Stored fields and highlights of `docs` in `searcher`.
fn fetch_from(
    shared: &Shared,
    searcher: &Searcher,
    request: &SearchRequest,
    text: Option<&dyn Query>,
    docs: &[DocRef],
) -> Result<Vec<Hit>> {
    let highlighters = highlighters(shared, searcher, request, text)?;
    docs.iter()
        .map(|doc| {
            let address = DocAddress::new((doc >> 32) as u32, *doc as u32);
            if address.segment_ord as usize >= searcher.segment_readers().len() {
                return Err(Error::InvalidRequest(format!(
                    "document {doc:#x} is not in searcher generation {}",
                    searcher_generation(shared, searcher)
                )));
            }
            let stored: TantivyDocument = searcher.doc(address)?;
            Ok(hit_from_document(shared, &stored, 0.0, &highlighters))
        })
        .collect()
}

/// The nearest `k` live versions that pass the filter, as ranked documents: by similarity,
/// then id hash, which also decides between versions tied at the k-th similarity.
fn vector_search(
    searcher: &Searcher,
    live: &LiveKeys,
    hashes: &IdHashes,
    index: &VectorIndex,
    values: &[f32],
    k: usize,
    filter: &Option<BoundedQuery>,
) -> Result<Vec<Ranked>> {
    let kind = index.params().distance;
    let found: Vec<(u64, f32)> = match filter {
        // The graph walk's over-fetch beyond k, cut below by the tie rule.
        None => index.candidates(values, k, |key| live.by_key.contains_key(&key))?,
        Some(f) => {
            let allowed: Vec<(u64, DocAddress)> =
                searcher.search(f, &KeyCollector).map_err(query_error)?;
            if allowed.len() <= EXACT_SEARCH_THRESHOLD.max(k) {
                let with_hashes = allowed
                    .into_iter()
                    .map(|(key, address)| Ok((key, hashes.get(address)?)))
                    .collect::<Result<Vec<_>>>()?;
                index.exact_search(values, k, with_hashes.into_iter())
            } else {
                let allowed: HashSet<u64> = allowed.into_iter().map(|(key, _)| key).collect();
                index.candidates(values, k, |key| allowed.contains(&key))?
            }
        }
    };
    let mut out = Vec::with_capacity(found.len());
    for (key, distance) in found {
        // A version replaced since the graph was searched is not in this searcher.
        let Some(&address) = live.by_key.get(&key) else {
            continue;
        };
        out.push(Ranked {
            address,
            score: similarity(kind, distance),
            id_hash: hashes.get(address)?,
        });
    }
    out.sort_by(Ranked::cmp_rank);
    out.truncate(k);
    Ok(out)
}

type Highlighters = Vec<(String, SnippetGenerator)>;

fn highlighters(
    shared: &Shared,
    searcher: &Searcher,
    request: &SearchRequest,
    text: Option<&dyn Query>,
) -> Result<Highlighters> {
    let (Some(h), Some(text)) = (&request.highlight, text) else {
        return Ok(Vec::new());
    };
    let (names, max_chars): (Vec<String>, usize) = match h {
        HighlightRequest::Enabled(false) => return Ok(Vec::new()),
        HighlightRequest::Enabled(true) => (
            shared
                .schema
                .text_fields()
                .into_iter()
                .map(String::from)
                .collect(),
            150,
        ),
        HighlightRequest::Fields { fields, max_chars } => (fields.clone(), *max_chars),
    };
    let mut out = Vec::new();
    for name in names {
        let field: Field = match shared.schema.fields.get(&name) {
            Some(def) if def.field_type == FieldType::Text && def.indexed => {
                shared.fields.user[&name]
            }
            _ => {
                return Err(Error::InvalidQuery(format!(
                    "cannot highlight {name:?}: it is not an indexed text field"
                )))
            }
        };
        let mut generator = SnippetGenerator::create(searcher, text, field).map_err(query_error)?;
        generator.set_max_num_chars(max_chars);
        out.push((name, generator));
    }
    Ok(out)
}

fn source_of(shared: &Shared, doc: &TantivyDocument) -> (String, Map<String, Value>) {
    let id = doc
        .get_first(shared.fields.id)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let fields = doc
        .get_first(shared.fields.source)
        .and_then(|v| v.as_str())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    (id, fields)
}

fn hit_from_document(
    shared: &Shared,
    doc: &TantivyDocument,
    score: f32,
    highlighters: &Highlighters,
) -> Hit {
    let (id, fields) = source_of(shared, doc);
    let mut highlights = Map::new();
    for (name, generator) in highlighters {
        let texts: Vec<&str> = match fields.get(name) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        for text in texts {
            let snippet = generator.snippet(text);
            if !snippet.highlighted().is_empty() {
                highlights.insert(name.clone(), Value::String(snippet.to_html()));
                break;
            }
        }
    }
    Hit {
        id,
        score,
        fields,
        highlights: (!highlights.is_empty()).then_some(highlights),
    }
}

pub(crate) fn get(shared: &Shared, id: &str) -> Result<Option<super::StoredDocument>> {
    if let Some(pending) = shared.unrefreshed.read().get(id) {
        return Ok(pending.as_ref().map(|doc| {
            let mut fields = Map::new();
            for (name, value) in &doc.source {
                if shared.schema.fields.get(name).is_some_and(|d| d.stored) {
                    fields.insert(name.clone(), value.clone());
                }
            }
            for (name, values) in &doc.vectors {
                fields.insert(name.clone(), Value::from(values.clone()));
            }
            super::StoredDocument {
                id: doc.id.clone(),
                fields,
            }
        }));
    }
    let searcher = shared.reader.searcher();
    let query = TermQuery::new(
        Term::from_field_text(shared.fields.id, id),
        IndexRecordOption::Basic,
    );
    let hits = searcher.search(&query, &KeyCollector)?;
    let Some((key, address)) = hits.into_iter().next() else {
        return Ok(None);
    };
    let doc: TantivyDocument = searcher.doc(address)?;
    let (id, mut fields) = source_of(shared, &doc);
    // A shard of the generation that kept vectors in the text index (`_rawvec`) returns
    // those; the vector index gives the rest as written.
    let raw = shared
        .fields
        .raw_vectors
        .and_then(|field| doc.get_first(field))
        .and_then(|v| v.as_bytes());
    if let Some(bytes) = raw {
        let vectors: Vec<(String, Vec<f32>)> =
            postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
                path: shared.dir.join("index"),
                message: format!("the stored vectors of {id:?} are unreadable: {e}"),
            })?;
        for (name, values) in vectors {
            fields.insert(name, Value::from(values));
        }
    } else {
        for (name, index) in &shared.vectors {
            if let Some(values) = index.get(key) {
                fields.insert(name.clone(), Value::from(values));
            }
        }
    }
    Ok(Some(super::StoredDocument { id, fields }))
}

/// Every live document of the searchable index, in batches of up to `batch`, each as GET
/// returns it (stored fields and vectors as written); `each` returns false to stop. Reads
/// one searcher: writes that are not yet refreshed are not included. Returns how many
/// documents were handed over.
pub(crate) fn scan(
    shared: &Shared,
    batch: usize,
    each: &mut dyn FnMut(Vec<super::StoredDocument>) -> Result<bool>,
) -> Result<u64> {
    let searcher = shared.reader.searcher();
    let mut pending = Vec::with_capacity(batch);
    let mut handed = 0u64;
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let alive = segment.alive_bitset();
        for doc in 0..segment.max_doc() {
            if alive.is_some_and(|a| !a.is_alive(doc)) {
                continue;
            }
            let stored: TantivyDocument =
                searcher.doc(tantivy::DocAddress::new(ordinal as u32, doc))?;
            let (id, _) = source_of(shared, &stored);
            // Through GET, so that vectors come back exactly as written.
            if let Some(found) = get(shared, &id)? {
                pending.push(found);
            }
            if pending.len() >= batch {
                handed += pending.len() as u64;
                if !each(std::mem::take(&mut pending))? {
                    return Ok(handed);
                }
            }
        }
    }
    if !pending.is_empty() {
        handed += pending.len() as u64;
        each(pending)?;
    }
    Ok(handed)
}
