//! Image preprocessing: decode (PNG, JPEG) to 8-bit RGB, resize the shorter
//! side to `spec.resize` with an antialiased bilinear (triangle) convolution
//! in f32, centre-crop `spec.input_size`, scale to [0,1] and normalise with
//! the model's mean and std, as CHW f32. torchvision semantics, except that
//! resizing happens in float; `scripts/models/reference.py` is an
//! independent numpy implementation of the same steps.

use super::error::InferError;
use dml_shared::models::ModelSpec;
use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use ndarray::{Array3, Array4, Axis};
use std::io::Cursor;

/// Largest accepted image side, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Most memory the decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Decodes `bytes` and turns them into the model's `[3, S, S]` input.
pub fn preprocess(bytes: &[u8], spec: &ModelSpec) -> Result<Array3<f32>, InferError> {
    let rgb = decode_rgb8(bytes)?;
    let s = spec.input_size;
    let (w, h) = rgb.dimensions();
    let (rw, rh) = resized_size(w, h, spec.resize);
    if rw < s || rh < s {
        return Err(InferError::Resize {
            reason: format!(
                "model \"{}\": resize {} is smaller than input_size {s}",
                spec.name, spec.resize
            ),
        });
    }
    let x = CropAxis::new(w, rw, s);
    let y = CropAxis::new(h, rh, s);

    // Only the source pixels the crop can see are converted to f32; the crop
    // box keeps their weights exactly those of resizing the whole image.
    let sub_w = x.hi - x.lo;
    let sub_h = y.hi - y.lo;
    let mut pixels = Vec::with_capacity(sub_w as usize * sub_h as usize);
    let raw = rgb.as_raw();
    for row in y.lo..y.hi {
        let start = (row as usize * w as usize + x.lo as usize) * 3;
        let line = &raw[start..start + sub_w as usize * 3];
        pixels.extend(
            line.chunks_exact(3)
                .map(|p| F32x3::new([f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])),
        );
    }
    let resize_err = |reason: String| InferError::Resize { reason };
    let src = TypedImageRef::new(sub_w, sub_h, &pixels).map_err(|e| resize_err(e.to_string()))?;
    let mut dst = TypedImage::<F32x3>::new(s, s);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(
            x.in0 - f64::from(x.lo),
            y.in0 - f64::from(y.lo),
            x.in1 - x.in0,
            y.in1 - y.in0,
        );
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .map_err(|e| resize_err(e.to_string()))?;

    let s = s as usize;
    let plane = s * s;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let norm = |v: f32, c: usize| (v / 255.0 - spec.mean[c]) / spec.std[c];
    for (i, p) in dst.pixels().iter().enumerate() {
        r[i] = norm(p.0[0], 0);
        g[i] = norm(p.0[1], 1);
        b[i] = norm(p.0[2], 2);
    }
    Ok(Array3::from_shape_vec((3, s, s), out).expect("3 planes of s*s"))
}

/// Stacks CHW images into an NCHW batch. All images should have the shape
/// of the first (as `preprocess` with one spec guarantees); any other is
/// left as zeros rather than panicking.
pub fn stack(images: &[Array3<f32>]) -> Array4<f32> {
    let Some(first) = images.first() else {
        return Array4::zeros((0, 3, 0, 0));
    };
    let (c, h, w) = first.dim();
    let mut batch = Array4::zeros((images.len(), c, h, w));
    for (mut slot, img) in batch.axis_iter_mut(Axis(0)).zip(images) {
        if img.dim() == (c, h, w) {
            slot.assign(img);
        }
    }
    batch
}

/// Decodes PNG or JPEG bytes to 8-bit RGB: grey is replicated, alpha
/// dropped, 16-bit scaled to 8-bit.
fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage, InferError> {
    let decode_err = |reason: String| InferError::Decode { reason };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(decode_err(format!(
                "{} images are not supported (PNG or JPEG only)",
                other.extensions_str().first().unwrap_or(&"this kind of")
            )));
        }
        None if bytes.is_empty() => return Err(decode_err("the file is empty".into())),
        None => {
            return Err(decode_err(
                "not a PNG or JPEG image (unrecognised header)".into(),
            ));
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        ImageError::Limits(l) => InferError::TooLarge {
            reason: format!(
                "{l} (at most {MAX_SIDE} px per side and {} MiB decoded)",
                MAX_DECODE_BYTES >> 20
            ),
        },
        other => decode_err(other.to_string()),
    })?;
    Ok(img.into_rgb8())
}

/// The size after resizing the shorter side to `resize`; the longer side is
/// `long * resize / short`, truncated (as torchvision).
fn resized_size(w: u32, h: u32, resize: u32) -> (u32, u32) {
    let scaled =
        |long: u32, short: u32| (u64::from(long) * u64::from(resize) / u64::from(short)) as u32;
    if w <= h {
        (resize, scaled(h, w))
    } else {
        (scaled(w, h), resize)
    }
}

/// One axis of the resize-then-centre-crop, in source coordinates.
struct CropAxis {
    /// The crop's span in the source.
    in0: f64,
    in1: f64,
    /// Source pixels whose weights can be non-zero for it.
    lo: u32,
    hi: u32,
}

impl CropAxis {
    /// `src` pixels resized to `resized`, of which `out` are kept from
    /// `round((resized - out) / 2)` on (round half to even, as Python).
    fn new(src: u32, resized: u32, out: u32) -> Self {
        let start = (f64::from(resized - out) / 2.0).round_ties_even();
        let scale = f64::from(src) / f64::from(resized);
        let in0 = start * scale;
        let in1 = ((start + f64::from(out)) * scale).min(f64::from(src));
        // Bilinear support is 1 source pixel, widened by the downscale
        // factor; one pixel more on each side for rounding.
        let radius = scale.max(1.0) + 1.0;
        let lo = (in0 - radius).floor().max(0.0) as u32;
        let hi = ((in1 + radius).ceil() as u32).min(src);
        Self { in0, in1, lo, hi }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::models::Registry;

    fn tiny() -> ModelSpec {
        Registry::builtin().get("tiny").unwrap().clone()
    }

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn resized_size_truncates_the_long_side() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(64, 64, 72), (72, 72));
        assert_eq!(resized_size(37, 211, 72), (72, 410));
    }

    #[test]
    fn crop_starts_round_half_to_even() {
        // (75 - 64) / 2 = 5.5 -> 6, (73 - 64) / 2 = 4.5 -> 4, as Python's round.
        let a = CropAxis::new(75, 75, 64);
        assert_eq!(a.in0, 6.0);
        let b = CropAxis::new(73, 73, 64);
        assert_eq!(b.in0, 4.0);
        assert_eq!((b.lo, b.hi), (2, 70));
    }

    #[test]
    fn a_uniform_image_normalises_to_constants() {
        let spec = tiny();
        let img = image::RgbImage::from_pixel(90, 50, image::Rgb([255, 128, 0]));
        let out = preprocess(&png(img.into()), &spec).unwrap();
        assert_eq!(out.dim(), (3, 64, 64));
        for c in 0..3 {
            let v = [255.0f32, 128.0, 0.0][c] / 255.0;
            let want = (v - spec.mean[c]) / spec.std[c];
            for x in out.index_axis(Axis(0), c) {
                assert!((x - want).abs() < 1e-5, "channel {c}: {x} vs {want}");
            }
        }
    }

    #[test]
    fn grey_and_alpha_become_rgb() {
        let spec = tiny();
        let grey = image::GrayImage::from_pixel(80, 80, image::Luma([100]));
        let rgba = image::RgbaImage::from_pixel(80, 80, image::Rgba([100, 100, 100, 7]));
        let a = preprocess(&png(grey.into()), &spec).unwrap();
        let b = preprocess(&png(rgba.into()), &spec).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn jpeg_is_decoded_too() {
        let img = image::RgbImage::from_fn(120, 90, |x, y| image::Rgb([x as u8, y as u8, 60]));
        let mut jpeg = Cursor::new(Vec::new());
        image::DynamicImage::from(img)
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .unwrap();
        let out = preprocess(jpeg.get_ref(), &tiny()).unwrap();
        assert_eq!(out.dim(), (3, 64, 64));
        // Blue is 60 everywhere, give or take JPEG's rounding.
        let spec = tiny();
        let want = (60.0 / 255.0 - spec.mean[2]) / spec.std[2];
        let centre = out[[2, 32, 32]];
        assert!((centre - want).abs() < 0.1, "{centre} vs {want}");
    }

    #[test]
    fn corrupt_and_non_image_bytes_are_errors() {
        let spec = tiny();
        let mut good = png(image::RgbImage::new(40, 40).into());
        good.truncate(good.len() / 2);
        for (bytes, want) in [
            (good.as_slice(), "cannot decode image"),
            (
                b"hello, this is a text file\n".as_slice(),
                "not a PNG or JPEG",
            ),
            (b"".as_slice(), "empty"),
            (b"GIF89a\x01\x00\x01\x00".as_slice(), "not supported"),
        ] {
            let e = preprocess(bytes, &spec).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        // A valid PNG header claiming 20000 x 10 pixels.
        let img = image::GrayImage::new(20000, 10);
        let e = preprocess(&png(img.into()), &tiny()).unwrap_err();
        assert!(matches!(e, InferError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn stack_makes_a_batch() {
        let a = Array3::from_elem((3, 4, 4), 1.0f32);
        let b = Array3::from_elem((3, 4, 4), 2.0f32);
        let batch = stack(&[a, b]);
        assert_eq!(batch.dim(), (2, 3, 4, 4));
        assert_eq!(batch[[1, 2, 3, 3]], 2.0);
        assert_eq!(batch[[0, 0, 0, 0]], 1.0);
        assert_eq!(stack(&[]).dim().0, 0);
    }
}
