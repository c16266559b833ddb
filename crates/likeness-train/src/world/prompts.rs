//! Prompt templates for a built-in concept, in the world's own caption grammar, so that the base
//! model understands every word but the identifier and the pixel checks can read them back:
//! backgrounds in every pattern and colour the concept does not wear, positions, and a second
//! object beside the subject.

use super::concepts::Concept;
use super::scene::{Colour, Shape};

/// Templates with `{}` for the subject ("sks star"), deterministic for a concept. The first
/// `eval` ones are for evaluation, the rest for DPO training; the two sets share no template.
pub fn concept_templates(concept: &Concept) -> Vec<String> {
    let painted = concept.painted_colours();
    let free: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|c| !painted.contains(c))
        .collect();
    let n = free.len();
    let positions = [
        "at the top left",
        "at the bottom right",
        "on the left",
        "on the right",
        "at the top",
        "at the bottom",
    ];
    let shapes = [Shape::Square, Shape::Circle, Shape::Triangle, Shape::Cross];
    let mut out = Vec::new();
    for i in 0..n {
        let (c, a, o) = (free[i], free[(i + 1) % n], free[(i + 2) % n]);
        let (c, a, o) = (c.name(), a.name(), o.name());
        let p = positions[i % positions.len()];
        let q = positions[(i + 3) % positions.len()];
        let s = shapes[i % shapes.len()].noun();
        out.push(format!("a picture of a {{}} on a plain {c} background"));
        out.push(format!(
            "a drawing of a {{}} on a striped {c} and {a} background"
        ));
        out.push(format!("a picture of a {{}} {p} on a plain {a} background"));
        out.push(format!(
            "a picture of a {{}} on a checked {a} and {c} background"
        ));
        out.push(format!(
            "a drawing of a {{}} on a dotted {c} and {a} background"
        ));
        out.push(format!(
            "a picture of a {{}} {p} and a small {o} {s} {q} on a plain {c} background"
        ));
        out.push(format!(
            "a picture of a {{}} on a background fading from {c} to {a}"
        ));
    }
    // Interleave so that any prefix mixes every kind of prompt.
    let kinds = 7;
    let mut mixed = Vec::with_capacity(out.len());
    for k in 0..kinds {
        for i in 0..n {
            mixed.push(out[i * kinds + (k + i) % kinds].clone());
        }
    }
    mixed
}

/// The evaluation and training split of [`concept_templates`]: every third template evaluates.
pub fn concept_template_split(concept: &Concept) -> (Vec<String>, Vec<String>) {
    let (mut eval, mut train) = (Vec::new(), Vec::new());
    for (i, t) in concept_templates(concept).into_iter().enumerate() {
        if i % 3 == 0 {
            eval.push(t);
        } else {
            train.push(t);
        }
    }
    (eval, train)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{CONCEPTS, parse_caption};

    #[test]
    fn every_template_parses_with_the_subject_and_a_background() {
        for c in &CONCEPTS {
            let all = concept_templates(c);
            assert_eq!(all.len(), 7 * (8 - c.painted_colours().len()));
            let unique: std::collections::BTreeSet<_> = all.iter().collect();
            assert_eq!(unique.len(), all.len(), "{}", c.name);
            for t in &all {
                let prompt = t.replace("{}", &format!("sks {}", c.class_noun));
                let parsed = parse_caption(&prompt).unwrap_or_else(|e| panic!("{prompt}: {e}"));
                assert!(parsed.background.is_some(), "{prompt}");
                let (_, group) = parsed.subject_group().unwrap_or_else(|| panic!("{prompt}"));
                assert_eq!(group.subject.as_deref(), Some("sks"), "{prompt}");
            }
            let (eval, train) = concept_template_split(c);
            assert!(eval.len() >= 12 && train.len() >= 16, "{}", c.name);
            assert!(eval.iter().all(|t| !train.contains(t)));
        }
    }
}
