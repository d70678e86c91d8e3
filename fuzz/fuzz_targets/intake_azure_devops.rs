#![no_main]

use ferry_core::intake::Sender;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz::intake(Sender::AzureDevops, data));
