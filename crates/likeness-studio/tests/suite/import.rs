//! Photo import: decoding, orientation, refusals, duplicates, flags, files and the crop preview.

use crate::common;

use std::path::PathBuf;

use common::{TempDir, encode, files_under, jpeg_with_orientation, save, sharp_photo};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use likeness_studio::import::{DEFAULT_BLUR_THRESHOLD, dhash, hamming, sharpness};
use likeness_studio::{ImportOptions, ImportReport, ProjectId, SkipReason, Workspace};

fn setup(label: &str) -> (TempDir, Workspace, ProjectId) {
    let dir = TempDir::new(label);
    let mut ws = Workspace::open(&dir.join("ws")).unwrap();
    let project = ws.create_project("Test", "sks", "thing").unwrap().id;
    std::fs::create_dir_all(dir.join("in")).unwrap();
    (dir, ws, project)
}

fn import(ws: &mut Workspace, project: ProjectId, paths: &[PathBuf]) -> ImportReport {
    ws.import_photos(project, paths, &ImportOptions::default())
        .expect("import runs")
}

fn only_skip(report: &ImportReport) -> &SkipReason {
    assert!(report.imported.is_empty(), "{report:?}");
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    &report.skipped[0].reason
}

#[test]
fn a_good_jpeg_and_png_are_imported_with_their_three_files() {
    let (dir, mut ws, project) = setup("good");
    let jpeg = save(&dir.join("in"), "big.jpg", &sharp_photo(1280, 960, 1));
    let png = save(&dir.join("in"), "square.png", &sharp_photo(512, 512, 2));
    let report = import(&mut ws, project, &[dir.join("in")]);
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!(report.imported.len(), 2);
    // A folder's files come sorted by name.
    assert_eq!(report.imported[0].source, jpeg);
    assert_eq!(report.imported[1].source, png);

    let big = &report.imported[0].photo;
    assert_eq!((big.width, big.height), (1280, 960));
    assert_eq!(big.source_name, "big.jpg");
    assert!(
        big.flags.is_clear(),
        "{:?} sharpness {}",
        big.flags,
        big.sharpness
    );
    assert_eq!(
        std::fs::read(&big.original_file).unwrap(),
        std::fs::read(&jpeg).unwrap()
    );
    let normalized = image::open(&big.normalized_file).unwrap();
    assert_eq!((normalized.width(), normalized.height()), (1024, 768));
    assert!(matches!(normalized, DynamicImage::ImageRgb8(_)));
    assert_eq!(
        ImageFormat::from_path(&big.normalized_file).unwrap(),
        ImageFormat::Png
    );
    let thumb = image::open(&big.thumbnail_file).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 192));
    assert!(
        big.original_file
            .starts_with(ws.photos_dir(project).join("original"))
    );
    assert!(
        big.normalized_file
            .starts_with(ws.photos_dir(project).join("normalized"))
    );
    assert!(
        big.thumbnail_file
            .starts_with(ws.photos_dir(project).join("thumbs"))
    );

    let small = &report.imported[1].photo;
    let normalized = image::open(&small.normalized_file).unwrap().to_rgb8();
    assert_eq!(
        normalized,
        sharp_photo(512, 512, 2),
        "a PNG within max_side is kept exactly"
    );
    assert_eq!(
        ws.photos(project).unwrap(),
        vec![big.clone(), small.clone()]
    );
}

#[test]
fn exif_orientation_6_is_applied() {
    let (dir, mut ws, project) = setup("exif");
    // 400x300 grey with a red top-left corner; orientation 6 means "rotate 90° clockwise".
    let img = RgbImage::from_fn(400, 300, |x, y| {
        if x < 60 && y < 60 {
            Rgb([230, 20, 20])
        } else {
            Rgb([128, 128, 128])
        }
    });
    let plain = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let path = dir.join("in/rotated.jpg");
    std::fs::write(&path, jpeg_with_orientation(&plain, 6)).unwrap();
    let report = import(&mut ws, project, std::slice::from_ref(&path));
    assert!(report.skipped.is_empty(), "{report:?}");
    let photo = &report.imported[0].photo;
    assert_eq!((photo.width, photo.height), (300, 400), "sides swap");
    let upright = image::open(&photo.normalized_file).unwrap().to_rgb8();
    assert_eq!(upright.dimensions(), (300, 400));
    let is_red = |p: &Rgb<u8>| p.0[0] > 180 && p.0[1] < 80;
    assert!(
        is_red(upright.get_pixel(299 - 20, 20)),
        "the red corner moved to the top right"
    );
    assert!(!is_red(upright.get_pixel(20, 20)));
    assert!(!is_red(upright.get_pixel(20, 399 - 20)));
    // The original keeps its bytes, Exif included.
    assert_eq!(
        std::fs::read(&photo.original_file).unwrap(),
        std::fs::read(&path).unwrap()
    );
    // The trainer reading the raw folder (`likeness dreambooth --images`) sees it upright too.
    let photos = likeness_train::data::load_photos(&dir.join("in"), 64).unwrap();
    let from_upright = likeness_train::data::fit_square(&DynamicImage::ImageRgb8(upright), 64);
    assert!(photos.photos[0].image == from_upright);
}

#[test]
fn a_text_file_and_a_truncated_png_are_rejected_and_leave_nothing() {
    let (dir, mut ws, project) = setup("bad");
    let text = dir.join("in/notes.jpg");
    std::fs::write(&text, "these are not the pixels you are looking for\n").unwrap();
    let png = encode(
        &DynamicImage::ImageRgb8(sharp_photo(400, 300, 3)),
        ImageFormat::Png,
    );
    let truncated = dir.join("in/cut.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();

    let bmp = dir.join("in/scan.bmp");
    std::fs::write(&bmp, [b"BM".as_slice(), &[0u8; 64]].concat()).unwrap();

    let report = import(&mut ws, project, &[text.clone(), truncated.clone(), bmp]);
    assert!(report.imported.is_empty(), "{report:?}");
    assert_eq!(
        report.skipped[2].reason,
        SkipReason::UnsupportedFormat {
            format: "BMP".into()
        }
    );
    assert_eq!(report.skipped[0].path, text);
    assert_eq!(report.skipped[0].reason, SkipReason::NotAnImage);
    assert_eq!(report.skipped[1].path, truncated);
    assert!(
        matches!(report.skipped[1].reason, SkipReason::Damaged { .. }),
        "{report:?}"
    );
    for s in &report.skipped {
        let line = s.reason.to_string();
        assert!(!line.is_empty() && !line.contains('\n'), "{line}");
    }
    assert!(files_under(&ws.project_dir(project)).is_empty());
    assert!(ws.photos(project).unwrap().is_empty());
}

#[test]
fn a_too_small_image_is_rejected() {
    let (dir, mut ws, project) = setup("small");
    let path = save(&dir.join("in"), "tiny.png", &sharp_photo(200, 300, 4));
    let report = import(&mut ws, project, &[path]);
    assert_eq!(
        only_skip(&report),
        &SkipReason::TooSmall {
            width: 200,
            height: 300,
            min_side: 256
        }
    );
    assert!(only_skip(&report).to_string().contains("200x300"));
    assert!(files_under(&ws.project_dir(project)).is_empty());
}

#[test]
fn an_animated_gif_is_rejected_and_a_still_gif_accepted() {
    let (dir, mut ws, project) = setup("gif");
    let frame =
        |seed| image::Frame::new(DynamicImage::ImageRgb8(sharp_photo(300, 300, seed)).to_rgba8());
    let mut animated = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut animated);
        enc.encode_frames(vec![frame(5), frame(6)]).unwrap();
    }
    let anim = dir.join("in/anim.gif");
    std::fs::write(&anim, &animated).unwrap();
    let mut still = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut still);
        enc.encode_frame(frame(7)).unwrap();
    }
    let still_path = dir.join("in/still.gif");
    std::fs::write(&still_path, &still).unwrap();

    let report = import(&mut ws, project, &[anim.clone(), still_path]);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].path, anim);
    assert_eq!(report.skipped[0].reason, SkipReason::Animated);
    assert_eq!(report.imported.len(), 1);
}

#[test]
fn a_16_bit_png_is_converted_and_a_transparent_one_flattened() {
    let (dir, mut ws, project) = setup("deep");
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(300, 300, |x, y| {
        Rgb([(x * 200) as u16, (y * 200) as u16, 40000])
    });
    let path = dir.join("in/deep.png");
    std::fs::write(
        &path,
        encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png),
    )
    .unwrap();
    let clear: RgbaImage = RgbaImage::from_fn(300, 300, |x, _| Rgba([0, 0, 0, (x % 256) as u8]));
    let alpha = dir.join("in/alpha.png");
    std::fs::write(
        &alpha,
        encode(&DynamicImage::ImageRgba8(clear), ImageFormat::Png),
    )
    .unwrap();

    let report = import(&mut ws, project, &[path, alpha]);
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!(
        report.imported[0].notes,
        vec!["16-bit converted to 8-bit".to_string()]
    );
    let normalized = image::open(&report.imported[0].photo.normalized_file).unwrap();
    assert!(matches!(normalized, DynamicImage::ImageRgb8(_)));
    let px = normalized.to_rgb8().get_pixel(100, 50).0;
    let to8 = |v: u16| (v as f64 * 255.0 / 65535.0).round() as u8;
    assert_eq!(px, [to8(20000), to8(10000), to8(40000)]);
    assert_eq!(
        report.imported[1].notes,
        vec!["transparency flattened onto white".to_string()]
    );
    let flat = image::open(&report.imported[1].photo.normalized_file)
        .unwrap()
        .to_rgb8();
    assert_eq!(
        flat.get_pixel(0, 0).0,
        [255, 255, 255],
        "fully transparent becomes white"
    );
    assert_eq!(
        flat.get_pixel(255, 0).0,
        [0, 0, 0],
        "opaque black stays black"
    );
}

#[test]
fn an_exact_duplicate_is_skipped_and_a_brighter_copy_flagged() {
    let (dir, mut ws, project) = setup("dup");
    let photo = sharp_photo(640, 480, 8);
    let first = save(&dir.join("in"), "a.png", &photo);
    let copy = dir.join("in/a-copy.png");
    std::fs::copy(&first, &copy).unwrap();
    let reencoded = save(&dir.join("in"), "a-again.jpg", &photo); // lossy: not an exact copy
    let brighter = RgbImage::from_fn(640, 480, |x, y| {
        Rgb(photo.get_pixel(x, y).0.map(|c| c.saturating_add(3)))
    });
    let brighter = save(&dir.join("in"), "a-brighter.png", &brighter);
    // The same kind of scene mirrored: its left-right differences are the opposite.
    let mirrored = image::imageops::flip_horizontal(&sharp_photo(640, 480, 9));
    let other = save(&dir.join("in"), "b.png", &mirrored);

    let report = import(&mut ws, project, &[first]);
    let original_id = report.imported[0].photo.id;
    let report = import(&mut ws, project, &[copy.clone(), brighter, other]);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].path, copy);
    assert_eq!(
        report.skipped[0].reason,
        SkipReason::Duplicate { of: original_id }
    );
    let bright = &report.imported[0].photo;
    assert_eq!(
        bright.flags.near_duplicate_of,
        Some(original_id),
        "{:?}",
        bright.flags
    );
    assert!(hamming(bright.dhash, ws.photo(original_id).unwrap().dhash) <= 6);
    let unrelated = &report.imported[1].photo;
    assert_eq!(unrelated.flags.near_duplicate_of, None);
    eprintln!(
        "dhash distance brighter {} unrelated {}",
        hamming(bright.dhash, ws.photo(original_id).unwrap().dhash),
        hamming(unrelated.dhash, ws.photo(original_id).unwrap().dhash)
    );
    // Importing a file again in the same call is caught too.
    let report = import(&mut ws, project, &[reencoded.clone(), reencoded]);
    assert_eq!(report.imported.len(), 1);
    assert!(matches!(
        report.skipped[0].reason,
        SkipReason::Duplicate { .. }
    ));
    assert_eq!(
        report.imported[0].photo.flags.near_duplicate_of,
        Some(original_id)
    );
}

#[test]
fn a_blurred_photo_is_flagged_and_a_sharp_one_is_not() {
    let (dir, mut ws, project) = setup("blur");
    let sharp = sharp_photo(640, 480, 10);
    let blurred = image::imageops::blur(&sharp, 3.0);
    let sharp_score = sharpness(&sharp);
    let blurred_score = sharpness(&blurred);
    eprintln!("sharpness: sharp {sharp_score:.1}, blurred (sigma 3) {blurred_score:.1}");
    assert!(sharp_score > 4.0 * DEFAULT_BLUR_THRESHOLD);
    assert!(blurred_score < DEFAULT_BLUR_THRESHOLD);

    let sharp_path = save(&dir.join("in"), "sharp.jpg", &sharp);
    let blurred_path = save(&dir.join("in"), "blurred.jpg", &blurred);
    let report = import(&mut ws, project, &[sharp_path, blurred_path]);
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(
        !report.imported[0].photo.flags.blurry,
        "{}",
        report.imported[0].photo.sharpness
    );
    assert!(
        report.imported[1].photo.flags.blurry,
        "{}",
        report.imported[1].photo.sharpness
    );
    let stored = ws.photo(report.imported[1].photo.id).unwrap();
    assert!(stored.flags.blurry, "the flag is stored");
    assert_ne!(dhash(&sharp), 0);
}

#[test]
fn removing_a_photo_deletes_its_files() {
    let (dir, mut ws, project) = setup("remove");
    let a = save(&dir.join("in"), "a.png", &sharp_photo(300, 300, 11));
    let b = save(&dir.join("in"), "b.png", &sharp_photo(300, 300, 12));
    let report = import(&mut ws, project, &[a, b]);
    let (kept, gone) = (&report.imported[0].photo, &report.imported[1].photo);
    assert_eq!(files_under(&ws.project_dir(project)).len(), 6);
    ws.remove_photo(gone.id).unwrap();
    for f in [
        &gone.original_file,
        &gone.normalized_file,
        &gone.thumbnail_file,
    ] {
        assert!(!f.exists(), "{}", f.display());
    }
    assert_eq!(files_under(&ws.project_dir(project)).len(), 3);
    assert_eq!(ws.photos(project).unwrap(), vec![kept.clone()]);
    assert!(ws.remove_photo(gone.id).is_err());
    // Deleting the project takes the remaining files with it.
    ws.delete_project(project).unwrap();
    assert!(!kept.original_file.exists());
}

#[test]
fn crop_preview_is_what_the_trainer_loads() {
    let (dir, mut ws, project) = setup("crop");
    let path = save(&dir.join("in"), "wide.jpg", &sharp_photo(900, 600, 13));
    let report = import(&mut ws, project, &[path]);
    let photo = &report.imported[0].photo;
    let preview = ws.crop_preview(photo.id, 512).unwrap();
    assert_eq!(preview.dimensions(), (512, 512));
    let small = ws.crop_preview(photo.id, 64).unwrap();
    assert_eq!(small.dimensions(), (64, 64));
    // The trainer reading the normalized photos gets exactly the preview.
    let normalized_dir = photo.normalized_file.parent().unwrap();
    let loaded = likeness_train::data::load_photos(normalized_dir, 512).unwrap();
    assert_eq!(loaded.photos[0].image, preview);
}

#[test]
fn a_missing_project_is_an_error_and_a_missing_file_a_skip() {
    let (dir, mut ws, project) = setup("missing");
    assert!(
        ws.import_photos(999, &[], &ImportOptions::default())
            .is_err()
    );
    let report = import(&mut ws, project, &[dir.join("in/nope.jpg")]);
    assert!(matches!(only_skip(&report), SkipReason::Unreadable { .. }));
}
