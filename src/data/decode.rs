//! Image files (PNG, JPEG baseline and progressive) decoded into the CHW bytes a model of a given
//! input shape takes: converted to grey (Pillow's luma) or RGB, and resized when their size
//! differs with the `image` crate's triangle filter scaled to the reduction — the filter of the
//! antialiased bilinear resize of Pillow and torchvision's `transforms.Resize`. Not bit-identical
//! (rounding differs by one grey level here and there): on the 60 real sample images, grey and
//! RGB, shrunk and enlarged, the mean absolute difference from Pillow is at most 0.35 grey levels
//! (tests/integration/serve.rs).

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

use super::ImageShape;

/// Why bytes are not an image exp can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a PNG or JPEG file.
    #[error("not a PNG or JPEG image ({0})")]
    Format(String),
    /// A PNG or JPEG that does not decode (truncated, corrupt).
    #[error("the {format} image does not decode: {message}")]
    Corrupt {
        /// PNG or JPEG.
        format: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// The model's channel count is neither 1 nor 3.
    #[error("models of {0} channels take no image files (1 or 3 only)")]
    Channels(usize),
}

/// Decodes a PNG or JPEG file into `shape.channels` × `shape.height` × `shape.width` bytes,
/// channel-major (CHW), as the data readers give their images.
pub fn decode_image(bytes: &[u8], shape: ImageShape) -> Result<Vec<u8>, DecodeError> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        Ok(other) => return Err(DecodeError::Format(format!("{other:?}"))),
        Err(_) if bytes.is_empty() => return Err(DecodeError::Format("no bytes".into())),
        Err(_) => return Err(DecodeError::Format("unknown format".into())),
    };
    let name = if format == ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    };
    if format == ImageFormat::Jpeg && !ends_with_image(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and reports nothing; Pillow (and so
        // torchvision) refuses such a file: "image file is truncated".
        return Err(DecodeError::Corrupt {
            format: name,
            message: "the file is truncated (no end-of-image marker after the last scan)".into(),
        });
    }
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format: name,
        message: e.to_string(),
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits());
    let image = reader.decode().map_err(corrupt)?;
    let (h, w) = (shape.height as u32, shape.width as u32);
    let fit = |image: DynamicImage| {
        if image.width() == w && image.height() == h {
            image
        } else {
            image.resize_exact(w, h, FilterType::Triangle)
        }
    };
    let plane = shape.height * shape.width;
    match shape.channels {
        1 => {
            let grey = match image {
                DynamicImage::ImageLuma8(grey) => grey,
                DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA8(_) => image.to_luma8(),
                colour => pil_grey(&colour.to_rgb8()),
            };
            Ok(fit(DynamicImage::ImageLuma8(grey)).into_luma8().into_raw())
        }
        3 => {
            let hwc = fit(DynamicImage::ImageRgb8(image.to_rgb8()))
                .into_rgb8()
                .into_raw();
            let mut chw = vec![0u8; 3 * plane];
            for (i, pixel) in hwc.chunks_exact(3).enumerate() {
                for (c, &v) in pixel.iter().enumerate() {
                    chw[c * plane + i] = v;
                }
            }
            Ok(chw)
        }
        c => Err(DecodeError::Channels(c)),
    }
}

/// The largest images decoded: a few hundred kilobytes of PNG can describe a 20,000 × 20,000
/// image; 8,192 pixels a side and 256 MiB of decoder memory are ample for photos.
fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(8192);
    limits.max_image_height = Some(8192);
    limits.max_alloc = Some(256 << 20);
    limits
}

/// Whether a JPEG's last scan (SOS marker FF DA) is followed by its end-of-image marker (FF D9).
/// Inside scans a 0xFF data byte is stuffed as FF 00, so both byte pairs are markers; an EXIF
/// thumbnail's own markers come before the main image's last scan.
fn ends_with_image(jpeg: &[u8]) -> bool {
    let last = |marker: u8| jpeg.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(scan), Some(end)) if end > scan)
}

/// Colour to grey with ITU-R 601-2 luma, as Pillow's `convert("L")` (and so torchvision's
/// `Grayscale`) computes it, in the same 16-bit fixed point: the `image` crate's own
/// conversion weighs the channels by Rec. 709 and gives other grey levels.
fn pil_grey(rgb: &image::RgbImage) -> image::GrayImage {
    let mut grey = image::GrayImage::new(rgb.width(), rgb.height());
    for (out, pixel) in grey.pixels_mut().zip(rgb.pixels()) {
        let [r, g, b] = pixel.0.map(u32::from);
        out.0[0] = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
    }
    grey
}
