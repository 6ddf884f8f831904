//! Topic matching: a binding key against a routing key, word by word, as RabbitMQ's
//! topic exchange does it.
//!
//! Words are separated by `.`; an empty key has no words at all (RabbitMQ's
//! `split_topic_key(<<>>)` is `[]`), and otherwise every `.` separates two words, so
//! `"a..b"` is `a`, the empty word, `b`, and `".b"` is the empty word then `b`. In a
//! binding key `*` is exactly one word (possibly empty) and `#` is zero or more words;
//! any other word, the empty word included, matches itself only.
//!
//! Why not recursion: `#` tried at every split point is exponential in the number of
//! `#`s ("#.#.#.#.#.#.#.#.#.x" against a long key that does not end in `x`). This is the
//! classic wildcard matcher instead: on a mismatch it resumes after the last `#` seen,
//! with that `#` taking one more word. Only the last `#` ever needs to be resumed, since
//! whatever an earlier one could absorb the later one can absorb too, so the work is at
//! most (binding words + 1) x (routing words + 1) steps, with no allocation.

/// The words of a topic key, without allocating. `Copy`, so a position in a key can be
/// saved and resumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words<'a> {
    rest: Option<&'a str>,
}

pub(crate) fn words(key: &str) -> Words<'_> {
    Words {
        rest: (!key.is_empty()).then_some(key),
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.find('.') {
            Some(dot) => {
                self.rest = Some(&rest[dot + 1..]);
                Some(&rest[..dot])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether the binding key `pattern` matches a routing key already split into `key`
/// (split once per publish, matched against every binding key).
pub(crate) fn matches(pattern: &str, key: &[&str]) -> bool {
    matches_counting(pattern, key, &mut 0)
}

/// [`matches`], adding the steps taken to `steps` (so tests can hold the bound).
pub(crate) fn matches_counting(pattern: &str, key: &[&str], steps: &mut usize) -> bool {
    let mut at = words(pattern);
    let mut next_key = 0;
    // After the last `#`: where its pattern continues, and the first key word it has
    // not absorbed yet.
    let mut resume: Option<(Words<'_>, usize)> = None;
    loop {
        *steps += 1;
        let mut ahead = at;
        match ahead.next() {
            Some("#") => {
                resume = Some((ahead, next_key));
                at = ahead;
                continue;
            }
            Some(word) if next_key < key.len() && (word == "*" || word == key[next_key]) => {
                at = ahead;
                next_key += 1;
                continue;
            }
            None if next_key == key.len() => return true,
            _ => {}
        }
        match &mut resume {
            Some((after_hash, absorbed_to)) if *absorbed_to < key.len() => {
                *absorbed_to += 1;
                next_key = *absorbed_to;
                at = *after_hash;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(key: &str) -> Vec<&str> {
        words(key).collect()
    }

    fn topic(pattern: &str, key: &str) -> bool {
        matches(pattern, &split(key))
    }

    /// The definition, recursively (exponential, so only for short inputs).
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            Some((&word, rest)) => match key.split_first() {
                Some((&first, key_rest)) if word == "*" || word == first => {
                    reference(rest, key_rest)
                }
                _ => false,
            },
        }
    }

    /// RabbitMQ's split, written independently of `words`.
    fn reference_split(key: &str) -> Vec<&str> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        }
    }

    #[test]
    fn keys_split_into_words_as_rabbitmq_splits_them() {
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split("a"), vec!["a"]);
        assert_eq!(split("a.b"), vec!["a", "b"]);
        assert_eq!(split("a..b"), vec!["a", "", "b"]);
        assert_eq!(split(".b"), vec!["", "b"]);
        assert_eq!(split("a."), vec!["a", ""]);
        assert_eq!(split("."), vec!["", ""]);
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(topic("#", ""));
        assert!(topic("#", "a"));
        assert!(topic("#", "a.b.c"));
        assert!(topic("#", "."));
        assert!(topic("a.#", "a"));
        assert!(topic("a.#", "a.b.c"));
        assert!(!topic("a.#", "b"));
        assert!(!topic("a.#", ""));
        assert!(topic("#.a", "a"));
        assert!(topic("#.a", "b.c.a"));
        assert!(!topic("#.a", "a.b"));
        assert!(topic("a.#.b", "a.b"));
        assert!(topic("a.#.b", "a.x.y.b"));
        assert!(!topic("a.#.b", "a.x.y"));
        assert!(topic("#.#", ""));
        assert!(topic("#.#", "a"));
        assert!(topic("#.#", "a.b.c"));
        assert!(topic("#.b.#", "b"));
        assert!(topic("#.b.#", "a.b.c"));
        assert!(!topic("#.b.#", "a.c"));
    }

    #[test]
    fn star_matches_exactly_one_word_and_the_empty_word_is_a_word() {
        assert!(!topic("*", ""));
        assert!(topic("*", "a"));
        assert!(!topic("*", "a.b"));
        assert!(topic("*.b", "a.b"));
        assert!(topic("*.b", ".b"));
        assert!(!topic("*.b", "b"));
        assert!(topic("a.*", "a."));
        assert!(!topic("a.*", "a"));
        assert!(topic("a.*.b", "a..b"));
        assert!(topic("*.*", "."));
        assert!(topic("#.*", "a"));
        assert!(!topic("#.*", ""));
        assert!(topic("*.#", "a"));
        assert!(topic("*.#.*", "a.b"));
        assert!(!topic("*.#.*", "a"));
    }

    #[test]
    fn other_words_match_literally() {
        assert!(topic("", ""));
        assert!(!topic("", "a"));
        assert!(!topic("a", ""));
        assert!(topic("a.b", "a.b"));
        assert!(!topic("a.b", "a.b.c"));
        assert!(!topic("a.b.c", "a.b"));
        assert!(topic("a..b", "a..b"));
        assert!(!topic("a..b", "a.b"));
        assert!(topic(".", "."));
        assert!(!topic("ab", "a.b"));
        // Wildcards only as whole words.
        assert!(!topic("a*", "ab"));
        assert!(topic("a*", "a*"));
        assert!(!topic("a#", "abc"));
    }

    #[test]
    fn adversarial_patterns_take_polynomial_steps() {
        let pattern = "#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.x";
        // 127 words of "a" (255 bytes, the longest AMQP routing key) that do not end in x.
        let key = vec!["a"; 127];
        let mut steps = 0;
        assert!(!matches_counting(pattern, &key, &mut steps));
        let bound = (split(pattern).len() + 1) * (key.len() + 1);
        assert!(steps <= bound, "{steps} steps, bound {bound}");

        let pattern = "*.#.*.#.*.#.*.#.*.#.*.#.*.#.*.#.b";
        let mut steps = 0;
        assert!(!matches_counting(pattern, &key, &mut steps));
        let bound = (split(pattern).len() + 1) * (key.len() + 1);
        assert!(steps <= bound, "{steps} steps, bound {bound}");
    }

    fn pattern_word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "*", "#"])
    }

    fn key_word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", ""])
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_recursive_definition(
            pattern in prop::collection::vec(pattern_word(), 0..7),
            key in prop::collection::vec(key_word(), 0..7),
        ) {
            let pattern = pattern.join(".");
            let key = key.join(".");
            let expected = reference(&reference_split(&pattern), &reference_split(&key));
            let mut steps = 0;
            prop_assert_eq!(matches_counting(&pattern, &split(&key), &mut steps), expected);
            let bound = (split(&pattern).len() + 1) * (split(&key).len() + 1);
            prop_assert!(steps <= bound, "{} steps, bound {}", steps, bound);
        }
    }
}
