"""The interop cases, shared by the tests (our venv) and ``reference.py`` (the reference library's venv).

Plain data only: this module imports nothing, so both interpreters can read it.
"""

ERNIE3_BASE = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=64, type_vocab_size=4, task_type_vocab_size=16, pad_token_id=0,
                   hidden_act="gelu")
# name -> (architecture, config changes); labels are left at PaddleNLP's defaults unless named
ERNIE3_CASES = {
    "cls2_default_labels": ("ErnieForSequenceClassification", dict(use_task_id=True)),
    "cls3_task_id": ("ErnieForSequenceClassification", dict(num_labels=3, use_task_id=True, task_id=1)),
    "cls2_no_task_id": ("ErnieForSequenceClassification", dict(use_task_id=False)),
    "token5": ("ErnieForTokenClassification", dict(num_labels=5, use_task_id=True)),
    "qa": ("ErnieForQuestionAnswering", dict(use_task_id=True)),
    "mlm": ("ErnieForMaskedLM", dict(use_task_id=False)),
}

ERNIE45_BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, head_dim=8,
                    max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6, pad_token_id=0,
                    use_bias=False, hidden_act="silu")
# name -> (config changes, save_pretrained keyword arguments)
ERNIE45_CASES = {
    "gqa_tied_sharded": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                         dict(max_shard_size="20KB")),
    "gqa_untied": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False), {}),
    "mqa_tied": (dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True), {}),
    "mha_untied_sharded": (dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
                           dict(max_shard_size="20KB")),
    # PaddleFormers' other save format: its own fused names (qkv per KV group), "source": "paddle"
    "gqa_paddle_pdparams": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
                            dict(save_checkpoint_format="", save_to_hf=False)),
    "gqa_paddle_safetensors": (dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True),
                               dict(save_checkpoint_format="", save_to_hf=False, safe_serialization=True)),
}

ERNIE45_MOE_BASE = dict(ERNIE45_BASE, num_attention_heads=4, num_key_value_heads=2, moe_num_experts=4, moe_k=2,
                        moe_intermediate_size=16, moe_layer_interval=1, num_nextn_predict_layers=0)
# name -> (config changes, save_pretrained keyword arguments). PaddleFormers 1.2.0 saves only with shared
# experts and moe_layer_interval 1
ERNIE45_MOE_CASES = {
    "moe_start1_untied": (dict(num_hidden_layers=2, moe_layer_start_index=1, moe_num_shared_experts=1,
                               tie_word_embeddings=False), {}),
    "moe_start2_tied_shared2": (dict(num_hidden_layers=3, moe_layer_start_index=2, moe_num_shared_experts=2,
                                     tie_word_embeddings=True), {}),
    "moe_start1_mqa_tied": (dict(num_hidden_layers=3, moe_layer_start_index=1, moe_num_shared_experts=1,
                                 num_key_value_heads=1, tie_word_embeddings=True), {}),
    "moe_start1_untied_sharded": (dict(num_hidden_layers=3, moe_layer_start_index=1, moe_num_shared_experts=1,
                                       tie_word_embeddings=False), dict(max_shard_size="20KB")),
}

# transformers (the math reference, tests/interop/test_transformers.py). Keys as config.json spells them;
# rope_theta and rms_norm_eps away from transformers' defaults so a key read wrongly shows.
TRANSFORMERS_BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, head_dim=8, max_position_embeddings=64,
                         rope_theta=10000.0, rms_norm_eps=1e-6, pad_token_id=0, use_bias=False, hidden_act="silu",
                         num_attention_heads=4)
_MOE = dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=16, moe_layer_interval=1, moe_use_aux_free=True,
            moe_norm_min=1e-12)
# name -> (architecture, config changes, transformers' save_pretrained keyword arguments)
TRANSFORMERS_CASES = {
    "moe_shared1_start1_untied": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=2, num_key_value_heads=2, moe_layer_start_index=1, moe_num_shared_experts=1,
        tie_word_embeddings=False), {}),
    "moe_noshared_start1_interval2_tied": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=4, num_key_value_heads=2, moe_layer_start_index=1, moe_layer_interval=2,
        moe_num_shared_experts=0, tie_word_embeddings=True), dict(max_shard_size="20KB")),
    "moe_shared2_start2_tied_mqa": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=3, num_key_value_heads=1, moe_layer_start_index=2, moe_num_shared_experts=2,
        tie_word_embeddings=True), dict(save_original_format=False)),  # fused 3-D experts, as in memory
    "moe_noshared_start2_interval2_mha_e6k3": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=4, num_key_value_heads=4, moe_layer_start_index=2, moe_layer_interval=2,
        moe_num_shared_experts=0, moe_num_experts=6, moe_k=3, tie_word_embeddings=False), {}),
    "moe_shared1_start1_end1_untied": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=3, num_key_value_heads=2, moe_layer_start_index=1, moe_layer_end_index=1,
        moe_num_shared_experts=1, tie_word_embeddings=False), {}),
    "moe_no_aux_free_tied": ("Ernie4_5_MoeForCausalLM", dict(
        _MOE, num_hidden_layers=2, num_key_value_heads=2, moe_layer_start_index=0, moe_num_shared_experts=1,
        moe_use_aux_free=False, tie_word_embeddings=True), {}),
    "dense_gqa_tied": ("Ernie4_5ForCausalLM", dict(num_hidden_layers=2, num_key_value_heads=2,
                                                   tie_word_embeddings=True), {}),
    "dense_mha_untied_sharded": ("Ernie4_5ForCausalLM", dict(num_hidden_layers=2, num_key_value_heads=4,
                                                             tie_word_embeddings=False), dict(max_shard_size="20KB")),
}

# a right-padded batch (pad id 0) every case runs on
INPUT_IDS = [[5, 9, 12, 30, 7, 2, 11, 3],
             [3, 4, 5, 6, 0, 0, 0, 0],
             [8, 1, 0, 0, 0, 0, 0, 0]]
