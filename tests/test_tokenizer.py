from gpt2_lightning.model.tokenizer import EOT_ID, VOCAB_SIZE, decode, encode, get_tokenizer


def test_gpt2_encoding_round_trips_and_knows_end_of_text():
    tok = get_tokenizer()
    assert tok.n_vocab == VOCAB_SIZE == 50257
    assert encode("Hello, world!") == [15496, 11, 995, 0]
    assert encode("<|endoftext|>") == [EOT_ID]
    text = "### Response:\nNaïve café — 東京 🙂"
    assert decode(encode(text)) == text
