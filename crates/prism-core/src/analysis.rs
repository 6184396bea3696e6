//! Text analyzers that text fields may name.

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenizerManager,
};

/// Registers Prism's analyzers (`en`) beside tantivy's built-in ones (`default`, `en_stem`,
/// `raw`, `whitespace`).
pub fn register(tokenizers: &TokenizerManager) {
    let stop_words =
        StopWordFilter::new(Language::English).expect("tantivy ships English stop words");
    tokenizers.register(
        "en",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(stop_words)
            .filter(Stemmer::new(Language::English))
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(name: &str, text: &str) -> Vec<String> {
        let manager = TokenizerManager::default();
        register(&manager);
        let mut analyzer = manager.get(name).unwrap();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while let Some(t) = stream.next() {
            out.push(t.text.clone());
        }
        out
    }

    #[test]
    fn en_lowercases_drops_stop_words_and_stems() {
        assert_eq!(
            tokens("en", "The Running of the Horses"),
            vec!["run", "hors"]
        );
        assert_eq!(tokens("en_stem", "The Horses"), vec!["the", "hors"]);
    }
}
