//! Request bodies into model inputs: MLflow's JSON request formats (`inputs`, `instances`,
//! `dataframe_split`, `dataframe_records`) with pixel values 0–255, and PNG/JPEG files. Both end
//! in `data::Normalisation`, the code that normalises training and evaluation batches.

use serde_json::Value;

use crate::data::decode::decode_image;
use crate::data::{ImageShape, Normalisation};

/// What the model takes and how pixels become inputs.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// One image's shape.
    pub shape: ImageShape,
    /// The run's normalisation.
    pub normalisation: Normalisation,
}

/// A batch of normalised images, `n × C × H × W` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Images in the batch.
    pub n: usize,
    /// The values, image after image, CHW.
    pub values: Vec<f32>,
}

/// Why a request body is not input the model can take (HTTP 400), said so the sender can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The request formats `/invocations` accepts, for messages.
pub const FORMATS: &str = "inputs, instances, dataframe_split or dataframe_records";

impl InputSpec {
    fn describe_shape(&self) -> String {
        let s = self.shape;
        let mut shapes = vec![format!("[{}, {}, {}]", s.channels, s.height, s.width)];
        if s.channels == 1 {
            shapes.push(format!("[{}, {}]", s.height, s.width));
        }
        shapes.push(format!("{} values", s.size()));
        shapes.join(" or ")
    }

    /// Parses an MLflow-style JSON request body.
    pub fn parse_json(&self, body: &[u8]) -> Result<Batch, InputError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| InputError(format!("the body is not JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(InputError(format!(
                "the body must be a JSON object with one of {FORMATS}"
            )));
        };
        let present: Vec<&str> = [
            "inputs",
            "instances",
            "dataframe_split",
            "dataframe_records",
        ]
        .into_iter()
        .filter(|k| fields.contains_key(*k))
        .collect();
        let key = match present[..] {
            [key] => key,
            [] => {
                let keys: Vec<&String> = fields.keys().collect();
                return Err(InputError(format!(
                    "the body has none of {FORMATS} (it has {keys:?})"
                )));
            }
            _ => {
                return Err(InputError(format!(
                    "the body has {present:?}: give exactly one of {FORMATS}"
                )))
            }
        };
        let payload = fields.remove(key).unwrap_or(Value::Null);
        let instances = match key {
            "inputs" | "instances" => self.tensor_instances(key, payload)?,
            "dataframe_split" => self.dataframe_split(payload)?,
            _ => self.dataframe_records(payload)?,
        };
        if instances.is_empty() {
            return Err(InputError(format!("{key} holds no images")));
        }
        // Grown image by image, each checked first: the count of instances is the sender's word,
        // and a body of small numbers must not reserve memory for images it does not hold.
        let mut values = Vec::new();
        for (i, instance) in instances.iter().enumerate() {
            self.instance(&format!("{key}[{i}]"), instance, &mut values)?;
        }
        Ok(Batch {
            n: instances.len(),
            values,
        })
    }

    /// `inputs` / `instances`: a list of images, or `{name: list}` with one name.
    fn tensor_instances(&self, key: &str, payload: Value) -> Result<Vec<Value>, InputError> {
        match payload {
            // A list of numbers is one image without its batch dimension.
            Value::Array(items) if items.first().is_some_and(Value::is_number) => {
                Err(InputError(format!(
                    "{key} is a list of numbers: it must be a list of images (wrap one image in a list: [[…]])"
                )))
            }
            Value::Array(items) => Ok(items),
            Value::Object(named) if named.len() == 1 => {
                let (name, value) = named.into_iter().next().unwrap_or_default();
                match value {
                    Value::Array(items) => Ok(items),
                    _ => Err(InputError(format!("{key}.{name} must be a list of images"))),
                }
            }
            Value::Object(named) => Err(InputError(format!(
                "{key} names {} inputs; the model has one (a list of images)",
                named.len()
            ))),
            _ => Err(InputError(format!("{key} must be a list of images"))),
        }
    }

    /// `dataframe_split`: `{"columns": […], "data": [row, …]}`, a row being one cell holding an
    /// image, or one column per pixel value.
    fn dataframe_split(&self, payload: Value) -> Result<Vec<Value>, InputError> {
        let Value::Object(mut frame) = payload else {
            return Err(InputError(
                "dataframe_split must be an object with \"data\" (and \"columns\")".into(),
            ));
        };
        let Some(Value::Array(rows)) = frame.remove("data") else {
            return Err(InputError(
                "dataframe_split.data must be a list of rows".into(),
            ));
        };
        rows.into_iter()
            .enumerate()
            .map(|(i, row)| match row {
                Value::Array(mut cells) if cells.len() == 1 => Ok(cells.remove(0)),
                Value::Array(cells) if cells.len() == self.shape.size() => Ok(Value::Array(cells)),
                Value::Array(cells) => Err(InputError(format!(
                    "dataframe_split.data[{i}] has {} columns: give one column holding the image, or {} (one per pixel)",
                    cells.len(),
                    self.shape.size()
                ))),
                _ => Err(InputError(format!("dataframe_split.data[{i}] must be a list"))),
            })
            .collect()
    }

    /// `dataframe_records`: `[{"column": image}, …]`, one column per record.
    fn dataframe_records(&self, payload: Value) -> Result<Vec<Value>, InputError> {
        let Value::Array(records) = payload else {
            return Err(InputError(
                "dataframe_records must be a list of records".into(),
            ));
        };
        records
            .into_iter()
            .enumerate()
            .map(|(i, record)| match record {
                Value::Object(columns) if columns.len() == 1 => {
                    Ok(columns.into_iter().next().map(|(_, v)| v).unwrap_or_default())
                }
                _ => Err(InputError(format!(
                    "dataframe_records[{i}] must be an object with one column holding the image (one column per pixel: use dataframe_split)"
                ))),
            })
            .collect()
    }

    /// Appends the normalised values of one image (nested lists of pixel values 0–255).
    fn instance(&self, at: &str, image: &Value, out: &mut Vec<f32>) -> Result<(), InputError> {
        let s = self.shape;
        let mut dims = Vec::new();
        let mut pixels = Vec::with_capacity(s.size());
        flatten(at, image, 0, &mut dims, &mut pixels, s.size())?;
        let fits = match dims[..] {
            [c, h, w] => [c, h, w] == [s.channels, s.height, s.width],
            [h, w] => s.channels == 1 && [h, w] == [s.height, s.width],
            [n] => n == s.size(),
            _ => false,
        };
        if !fits {
            return Err(InputError(format!(
                "{at} has shape {dims:?}; the model takes {}",
                self.describe_shape()
            )));
        }
        let plane = s.height * s.width;
        for (i, &p) in pixels.iter().enumerate() {
            if !(0.0..=255.0).contains(&p) {
                return Err(InputError(format!(
                    "{at}: value {p} at position {i} is outside the pixel range 0–255"
                )));
            }
            out.push(self.normalisation.value(i / plane, p));
        }
        Ok(())
    }

    /// Decodes a PNG or JPEG body into a batch of one.
    pub fn parse_image(&self, body: &[u8]) -> Result<Batch, InputError> {
        let bytes = decode_image(body, self.shape).map_err(|e| InputError(e.to_string()))?;
        let plane = self.shape.height * self.shape.width;
        let values = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| self.normalisation.value(i / plane, b as f64))
            .collect();
        Ok(Batch { n: 1, values })
    }
}

/// Flattens nested lists of numbers, checking they are rectangular; `dims` gets the shape.
fn flatten(
    at: &str,
    value: &Value,
    depth: usize,
    dims: &mut Vec<usize>,
    out: &mut Vec<f64>,
    most: usize,
) -> Result<(), InputError> {
    match value {
        Value::Number(n) => {
            if depth != dims.len() {
                return Err(InputError(format!("{at} is not a rectangular array")));
            }
            if out.len() == most {
                return Err(InputError(format!(
                    "{at} holds more than the {most} values of one image"
                )));
            }
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        Value::Array(items) => {
            match dims.get(depth) {
                None if depth == dims.len() => dims.push(items.len()),
                Some(&d) if d == items.len() => {}
                _ => return Err(InputError(format!("{at} is not a rectangular array"))),
            }
            if items.is_empty() {
                return Err(InputError(format!("{at} holds an empty list")));
            }
            items
                .iter()
                .try_for_each(|item| flatten(at, item, depth + 1, dims, out, most))
        }
        other => Err(InputError(format!(
            "{at} holds {}, not a pixel value",
            match other {
                Value::String(_) => "a string",
                Value::Bool(_) => "a boolean",
                Value::Null => "null",
                _ => "an object",
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            shape: ImageShape {
                channels: 1,
                height: 2,
                width: 2,
            },
            normalisation: Normalisation {
                mean: vec![0.5],
                std: vec![0.25],
            },
        }
    }

    #[test]
    fn every_mlflow_format_gives_the_same_batch() {
        let expected = Batch {
            n: 2,
            values: [0.0, 255.0, 51.0, 127.5, 255.0, 255.0, 0.0, 0.0]
                .map(|p| ((p / 255.0 - 0.5) / 0.25) as f32)
                .to_vec(),
        };
        for body in [
            r#"{"inputs": [[[0, 255], [51, 127.5]], [[255, 255], [0, 0]]]}"#,
            r#"{"inputs": [[[[0, 255], [51, 127.5]]], [[[255, 255], [0, 0]]]]}"#,
            r#"{"instances": [[0, 255, 51, 127.5], [255, 255, 0, 0]]}"#,
            r#"{"inputs": {"pixels": [[0, 255, 51, 127.5], [255, 255, 0, 0]]}}"#,
            r#"{"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[0, 255, 51, 127.5], [255, 255, 0, 0]]}}"#,
            r#"{"dataframe_split": {"columns": ["image"], "data": [[[[0, 255], [51, 127.5]]], [[[255, 255], [0, 0]]]]}}"#,
            r#"{"dataframe_records": [{"image": [[0, 255], [51, 127.5]]}, {"image": [255, 255, 0, 0]}]}"#,
        ] {
            assert_eq!(
                spec().parse_json(body.as_bytes()),
                Ok(expected.clone()),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_bodies_are_named() {
        for (body, message) in [
            ("[1]", "the body must be a JSON object"),
            ("{", "the body is not JSON"),
            (r#"{"data": []}"#, "the body has none of inputs, instances, dataframe_split or dataframe_records (it has [\"data\"])"),
            (r#"{"inputs": [], "instances": []}"#, "give exactly one of"),
            (r#"{"inputs": []}"#, "inputs holds no images"),
            (r#"{"inputs": [[1, 2, 3]]}"#, "inputs[0] has shape [3]; the model takes [1, 2, 2] or [2, 2] or 4 values"),
            (r#"{"inputs": [1, 2, 3, 4]}"#, "inputs is a list of numbers: it must be a list of images"),
            (r#"{"inputs": [[1, 2, 3, 4, 5]]}"#, "inputs[0] holds more than the 4 values of one image"),
            (r#"{"inputs": [[[1, 2], [3]]]}"#, "inputs[0] is not a rectangular array"),
            (r#"{"inputs": [[1, 2, 3, 256]]}"#, "inputs[0]: value 256 at position 3 is outside the pixel range 0–255"),
            (r#"{"inputs": [[1, 2, 3, -1]]}"#, "outside the pixel range"),
            (r#"{"inputs": [[1, 2, "x", 4]]}"#, "inputs[0] holds a string, not a pixel value"),
            (r#"{"inputs": {"a": [], "b": []}}"#, "inputs names 2 inputs"),
            (r#"{"dataframe_split": {"data": [[1, 2]]}}"#, "dataframe_split.data[0] has 2 columns"),
            (r#"{"dataframe_records": [{"a": 1, "b": 2}]}"#, "use dataframe_split"),
        ] {
            let e = spec().parse_json(body.as_bytes()).unwrap_err();
            assert!(e.0.contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn non_images_are_named() {
        assert_eq!(
            spec().parse_image(b"").unwrap_err().0,
            "not a PNG or JPEG image (no bytes)"
        );
        assert_eq!(
            spec().parse_image(b"GIF89a....").unwrap_err().0,
            "not a PNG or JPEG image (Gif)"
        );
        let truncated = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(spec()
            .parse_image(truncated)
            .unwrap_err()
            .0
            .starts_with("the PNG image does not decode"));
    }
}
