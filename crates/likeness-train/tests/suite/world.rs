//! The built-in world: captions parse back to their scenes, renders are deterministic, the pixel
//! check is right on clean renders and near chance on mismatched ones, and concepts are told apart.

use likeness_train::world::check::{
    CONCEPT_PRESENCE_THRESHOLD, background_matches, check_background, check_object_colour,
    check_prompt, concept_presence, concept_presence_at, scene_check_rates,
};
use likeness_train::world::*;

fn scene(seed: u64) -> Scene {
    Scene::random(&mut WorldRng::new(seed), &WorldSpec::default())
}

#[test]
fn captions_parse_back_to_their_scenes() {
    let vocabulary = caption_vocabulary();
    let mut rng = WorldRng::new(7);
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..1000 {
        let scene = scene(seed);
        let expected = ParsedPrompt::from(&scene);
        let mut texts = vec![canonical_caption(&scene)];
        texts.extend((0..3).map(|_| caption(&scene, &mut rng)));
        for text in texts {
            let parsed = parse_caption(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(parsed, expected, "seed {seed}: `{text}`");
            for word in text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                assert!(
                    vocabulary.contains(word),
                    "`{word}` of `{text}` is outside the vocabulary"
                );
            }
            distinct.insert(text);
        }
    }
    // Paraphrases really vary the wording.
    assert!(
        distinct.len() > 3500,
        "only {} distinct captions",
        distinct.len()
    );
}

#[test]
fn scenes_cover_the_world() {
    let scenes: Vec<Scene> = (0..1000).map(scene).collect();
    let mut shapes = std::collections::BTreeSet::new();
    let mut patterns = std::collections::BTreeSet::new();
    let mut colours = std::collections::BTreeSet::new();
    let mut two_groups = 0;
    for s in &scenes {
        patterns.insert(s.background.pattern);
        two_groups += (s.groups.len() == 2) as usize;
        for g in &s.groups {
            shapes.insert(g.shape);
            colours.insert(g.colour);
            assert!(g.count >= 1 && g.count <= g.position.max_count());
            assert!(s.background.stands_apart(g.colour), "{s:?}");
        }
        if let [a, b] = s.groups.as_slice() {
            assert!(!a.position.region().overlaps(&b.position.region()));
        }
    }
    assert_eq!(shapes.len(), Shape::ALL.len());
    assert_eq!(patterns.len(), Pattern::ALL.len());
    assert_eq!(colours.len(), Colour::ALL.len());
    assert!(
        (300..600).contains(&two_groups),
        "{two_groups} scenes with two groups"
    );
}

#[test]
fn same_seed_same_bytes() {
    for seed in [0u64, 1, 42, 9_999] {
        let (a, b) = (scene(seed), scene(seed));
        assert_eq!(a, b);
        assert_eq!(render(&a, 32).as_raw(), render(&b, 32).as_raw());
        let mut r1 = WorldRng::new(seed);
        let mut r2 = WorldRng::new(seed);
        assert_eq!(caption(&a, &mut r1), caption(&b, &mut r2));
        let json = serde_json::to_string(&a).expect("scene serialises");
        let back: Scene = serde_json::from_str(&json).expect("scene deserialises");
        assert_eq!(back, a);
    }
    assert_ne!(
        render(&scene(1), 32).as_raw(),
        render(&scene(2), 32).as_raw()
    );
    // A fixed seed keeps its scene across versions of `rand`: WorldRng is our own.
    assert_eq!(WorldRng::new(0).next_u64_for_tests(), 0xe220_a839_7b1d_cdaf);
    let a: Vec<_> = caption_dataset(3, 5, 24).collect();
    let b: Vec<_> = caption_dataset(3, 5, 24).collect();
    assert_eq!(a.len(), 3);
    for ((ia, ta), (ib, tb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb);
        assert_eq!(ia.as_raw(), ib.as_raw());
        assert_eq!(ia.dimensions(), (24, 24));
    }
    for size in [16, 48, 64, 100] {
        assert_eq!(render(&scene(3), size).dimensions(), (size, size));
    }
}

trait NextU64 {
    fn next_u64_for_tests(self) -> u64;
}
impl NextU64 for WorldRng {
    fn next_u64_for_tests(mut self) -> u64 {
        rand::RngCore::next_u64(&mut self)
    }
}

#[test]
fn check_is_right_on_clean_renders_and_near_chance_on_mismatches() {
    for (size, n) in [(32u32, 300u64), (64, 80)] {
        let scenes: Vec<Scene> = (0..n).map(|i| scene(10_000 + i)).collect();
        let images: Vec<_> = scenes.iter().map(|s| render(s, size)).collect();
        let clean = scene_check_rates(images.iter().zip(&scenes));
        // Each picture against the scene of another seed.
        let others: Vec<Scene> = (0..n).map(|i| scene(50_000 + i)).collect();
        let mismatched = scene_check_rates(images.iter().zip(&others));
        let same_background = scenes
            .iter()
            .zip(&others)
            .filter(|(a, b)| a.background == b.background)
            .count() as f32
            / n as f32;
        println!("{size}px clean {clean:?}");
        println!("{size}px mismatched {mismatched:?}, identical backgrounds {same_background}");
        assert!(clean.background >= 0.99, "{clean:?}");
        assert!(clean.object_colour >= 0.99, "{clean:?}");
        assert!(
            mismatched.background <= same_background + 0.03,
            "{mismatched:?}"
        );
        assert!(mismatched.object_colour <= 0.2, "{mismatched:?}");
        assert!(mismatched.both <= 0.02, "{mismatched:?}");
    }
}

#[test]
fn background_check_tells_patterns_and_colours_apart() {
    use Colour::*;
    let backgrounds = [
        Background::plain(Blue),
        Background::patterned(Pattern::Stripes, Blue, White),
        Background::patterned(Pattern::Dots, Blue, White),
        Background::patterned(Pattern::Checks, Blue, White),
        Background::patterned(Pattern::Gradient, Blue, White),
        Background::plain(Red),
        Background::patterned(Pattern::Stripes, Red, Yellow),
    ];
    for size in [32, 64] {
        for (i, drawn) in backgrounds.iter().enumerate() {
            let img = render_background(drawn, size);
            for (j, asked) in backgrounds.iter().enumerate() {
                let req = BackgroundRequest {
                    pattern: asked.pattern,
                    colour: Some(asked.colour),
                    accent: asked.accent,
                };
                assert_eq!(
                    background_matches(&img, &req),
                    i == j,
                    "{size}px drawn {drawn:?}, asked {asked:?}"
                );
            }
        }
    }
}

#[test]
fn concept_photos_vary_and_show_their_concept() {
    for size in [32u32, 64] {
        for c in &CONCEPTS {
            let photos: Vec<_> = (0..CONCEPT_PHOTO_COUNT as u64)
                .map(|k| render_concept_photo(c, k, size))
                .collect();
            let scores: Vec<f32> = photos.iter().map(|a| concept_presence(a, c)).collect();
            println!("{size}px {} photo presence {scores:.2?}", c.name);
            for (i, a) in photos.iter().enumerate() {
                let p = concept_presence(a, c);
                assert!(
                    p >= CONCEPT_PRESENCE_THRESHOLD,
                    "{size}px {} photo {i}: presence {p}",
                    c.name
                );
                for other in CONCEPTS.iter().filter(|o| o.name != c.name) {
                    let q = concept_presence(a, other);
                    assert!(
                        q < CONCEPT_PRESENCE_THRESHOLD,
                        "{} photo scores {q} as {}",
                        c.name,
                        other.name
                    );
                }
                for b in &photos[i + 1..] {
                    let diff: f32 = a
                        .as_raw()
                        .iter()
                        .zip(b.as_raw())
                        .map(|(x, y)| (*x as f32 - *y as f32).abs())
                        .sum::<f32>()
                        / a.as_raw().len() as f32;
                    assert!(diff > 20.0, "{} photos too alike ({diff})", c.name);
                }
            }
        }
    }
    // Generic scenes never show a concept.
    let mut highest = 0.0f32;
    for i in 0..200 {
        let s = scene(70_000 + i);
        let img = render(&s, 32);
        for c in &CONCEPTS {
            let p = concept_presence(&img, c);
            highest = highest.max(p);
            assert!(
                p < CONCEPT_PRESENCE_THRESHOLD,
                "{} scores {p} on `{}`",
                c.name,
                canonical_caption(&s)
            );
        }
    }
    println!("highest concept presence on 200 generic scenes: {highest}");
}

#[test]
fn concepts_are_outside_the_base_vocabulary() {
    let vocabulary = caption_vocabulary();
    assert!(CONCEPTS.len() >= 3);
    for c in &CONCEPTS {
        assert!(!vocabulary.contains(c.name));
        assert!(vocabulary.contains(c.class_noun));
        for part in c.name.split('-') {
            if part != c.class_noun {
                assert!(
                    !vocabulary.contains(part),
                    "`{part}` of {} is a caption word",
                    c.name
                );
            }
        }
    }
    for word in ["creature", "sks", "crown", "eyes", "belt"] {
        assert!(!vocabulary.contains(word), "{word}");
    }
    assert_eq!(concept("ring-creature").map(|c| c.body), Some(Colour::Blue));
    assert!(concept("dog").is_none());
}

#[test]
fn prompts_with_a_subject_parse_and_render_in_context() {
    let parsed = parse_caption("sks creature on a striped green background").expect("parses");
    assert_eq!(
        parsed.background,
        Some(BackgroundRequest {
            pattern: Pattern::Stripes,
            colour: Some(Colour::Green),
            accent: None
        })
    );
    assert_eq!(parsed.groups.len(), 1);
    assert_eq!(parsed.groups[0].subject.as_deref(), Some("sks creature"));

    let parsed = parse_caption("a photo of a sks star at the top left and two big red squares on the right, on a white background")
        .expect("parses");
    assert_eq!(parsed.groups[0].subject.as_deref(), Some("sks"));
    assert_eq!(parsed.groups[0].shape, Some(Shape::Star));
    assert_eq!(parsed.groups[0].position, Some(Position::TopLeft));
    assert_eq!(
        parsed.groups[1],
        GroupRequest {
            count: Some(2),
            size: Some(Size::Big),
            colour: Some(Colour::Red),
            shape: Some(Shape::Square),
            position: Some(Position::Right),
            subject: None,
        }
    );
    assert_eq!(parsed.background.map(|b| b.pattern), Some(Pattern::Plain));

    let contexts = [
        (
            "sks creature on a striped black and white background",
            Position::Centre,
        ),
        (
            "a sks creature on a plain purple background",
            Position::Centre,
        ),
        (
            "sks creature on the left and a white circle on the right on a checkered red and black background",
            Position::Left,
        ),
        (
            "on a gradient from white to black, sks creature",
            Position::Centre,
        ),
        (
            "sks creature at the bottom on a black background with white dots",
            Position::Bottom,
        ),
    ];
    for c in &CONCEPTS {
        for (k, (prompt, position)) in contexts.iter().enumerate() {
            let parsed = parse_caption(prompt).expect("parses");
            let asked = parsed
                .background
                .map(|b| [b.colour, b.accent])
                .unwrap_or_default();
            if asked
                .iter()
                .flatten()
                .any(|a| c.painted_colours().contains(a))
            {
                continue; // a background in the concept's own colours hides it from any check
            }
            let layout = concept_scene(c, &parsed, k as u64);
            assert_eq!(layout.subject_position, *position, "{prompt}");
            let img = render_concept_in_prompt(c, prompt, k as u64, 64).expect("renders");
            assert_eq!(img.as_raw(), render_concept_scene(c, &layout, 64).as_raw());
            let check = check_prompt(&img, &parsed);
            assert_eq!(check.background, Some(true), "{} in `{prompt}`", c.name);
            assert!(
                check.object_colours.iter().all(|o| *o != Some(false)),
                "{} in `{prompt}`",
                c.name
            );
            let p = concept_presence_at(&img, c, *position);
            assert!(
                p >= CONCEPT_PRESENCE_THRESHOLD,
                "{} in `{prompt}`: presence {p}",
                c.name
            );
        }
    }
}

#[test]
fn parser_rejects_contradictions() {
    for bad in [
        "",
        " , ",
        "a red blue star",
        "two three stars",
        "a star at the top bottom",
        "two red",
        "on a red and white background, a star",
    ] {
        assert!(parse_caption(bad).is_err(), "`{bad}` parsed");
    }
    let e = parse_caption("a red blue star").expect_err("contradiction");
    assert!(e.to_string().contains("a red blue star"), "{e}");
}

#[test]
fn concept_photos_are_written_as_pngs() {
    let dir = std::env::temp_dir().join(format!("likeness-world-{}", std::process::id()));
    let paths = write_concept_photos("heart-creature", &dir, 32).expect("writes");
    assert_eq!(paths.len(), CONCEPT_PHOTO_COUNT);
    for (k, path) in paths.iter().enumerate() {
        let img = image::open(path).expect("reads back").to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        assert_eq!(
            img.as_raw(),
            render_concept_photo(&CONCEPTS[2], k as u64, 32).as_raw()
        );
    }
    assert!(matches!(
        write_concept_photos("dragon", &dir, 32),
        Err(WorldError::UnknownConcept(_))
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn object_check_needs_colour_at_the_right_place() {
    let s = Scene {
        background: Background::plain(Colour::White),
        groups: vec![ObjectGroup {
            count: 2,
            size: Size::Big,
            colour: Colour::Red,
            shape: Shape::Star,
            position: Position::Left,
        }],
        jitter_seed: 3,
    };
    let img = render(&s, 32);
    assert!(check_background(&img, &s) && check_object_colour(&img, &s));
    let mut wrong_place = s.clone();
    wrong_place.groups[0].position = Position::Right;
    assert!(!check_object_colour(&img, &wrong_place));
    let mut wrong_colour = s.clone();
    wrong_colour.groups[0].colour = Colour::Blue;
    assert!(!check_object_colour(&img, &wrong_colour));
}

/// The committed built-in models (assets/models) load through the same loaders as SD 1.5, carry
/// the world tokenizer, and draw: a generation is finite and not flat.
#[test]
fn builtin_models_load_and_draw() {
    use likeness_models::clip_model::ClipModel;
    use likeness_models::device::CpuBackend as B;
    use likeness_models::pipeline::{GenerateParams, SeededNoise, to_rgb8};
    use likeness_models::sd::{LoadOptions, StableDiffusion};

    let (sd, clip) = likeness_train::world_train::builtin_models().unwrap();
    let device = Default::default();
    let model = StableDiffusion::<B>::load(&sd, &LoadOptions::default(), &device).unwrap();
    let world = likeness_train::world_train::world_tokenizer().unwrap();
    let prompt = "a red star on a blue background";
    assert_eq!(model.tokenizer.encode(prompt), world.encode(prompt));
    let params = GenerateParams {
        prompt: prompt.into(),
        steps: 6,
        guidance: 3.0,
        seed: 1,
        width: model.native_size(),
        height: model.native_size(),
        ..Default::default()
    };
    let latents = model
        .sample(&params, None, &mut SeededNoise::new(1, 1), &mut |_, _| {})
        .unwrap();
    let img = to_rgb8(model.decode(latents)).unwrap().remove(0);
    let px = img.as_raw();
    let mean = px.iter().map(|&v| v as f32).sum::<f32>() / px.len() as f32;
    let spread = px.iter().map(|&v| (v as f32 - mean).abs()).sum::<f32>() / px.len() as f32;
    assert!(spread > 2.0, "a flat picture (mean abs deviation {spread})");

    let clip = ClipModel::<B>::from_dir(&clip, &device).unwrap();
    let ids = world.encode(prompt);
    let ids = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [1, ids.len()],
        ),
        &device,
    );
    let embeds: Vec<f32> = clip.text_embeds(ids).unwrap().into_data().to_vec().unwrap();
    assert!(embeds.iter().all(|v| v.is_finite()) && embeds.iter().any(|v| *v != 0.0));
}

#[test]
fn object_cells_mark_where_the_objects_are() {
    let (size, cell) = (32u32, 4u32);
    let side = size / cell;
    let mut marked_total = 0usize;
    for seed in 0..100 {
        let scene = scene(seed);
        let cells = object_cells(&render(&scene, size), &scene.background, cell);
        assert_eq!(cells.len(), (side * side) as usize);
        let placements = scene.placements(size);
        let centre_of = |i: usize| {
            let (cx, cy) = ((i as u32 % side) as f32, (i as u32 / side) as f32);
            ((cx + 0.5) * cell as f32, (cy + 0.5) * cell as f32)
        };
        let half_diagonal = cell as f32 * std::f32::consts::SQRT_2 / 2.0;
        // Every marked cell lies within an object's reach, and every object marks a cell
        // within its radius.
        for (i, _) in cells.iter().enumerate().filter(|(_, m)| **m) {
            let (x, y) = centre_of(i);
            assert!(
                placements.iter().any(|p| {
                    (x - p.centre.0).hypot(y - p.centre.1) <= p.radius + half_diagonal + 1.0
                }),
                "seed {seed}: cell {i} is marked but far from every object"
            );
        }
        for p in &placements {
            assert!(
                cells.iter().enumerate().any(|(i, m)| {
                    let (x, y) = centre_of(i);
                    *m && (x - p.centre.0).hypot(y - p.centre.1) <= p.radius + half_diagonal
                }),
                "seed {seed}: an object at {:?} marks no cell",
                p.centre
            );
        }
        let marked = cells.iter().filter(|m| **m).count();
        assert!(marked < cells.len(), "seed {seed}: every cell marked");
        marked_total += marked;
    }
    let share = marked_total as f64 / (100 * side * side) as f64;
    eprintln!("object cells: {share:.3} of the 8x8 grid");
    assert!(share > 0.02 && share < 0.6, "{share}");
}
