"""CategoryBank: the model's categories keyed by name (states, prompt vectors, active name) as module state."""

from __future__ import annotations

import pytest
import torch

from anomclip_hf.errors import AdapterError, AnomCLIPError, CategoryError
from anomclip_hf.model.categories import CategoryBank
from anomclip_hf.model.category import CategoryState


def _state(name: str, shots: int = 2, seed: int = 0) -> CategoryState:
    generator = torch.Generator().manual_seed(seed)
    bank = [torch.nn.functional.normalize(torch.randn(shots, 4, 8, generator=generator), dim=-1)]
    return CategoryState(name=name, class_name=name, phrases=[f"{name} with a scratch"], memory_bank=bank)


def test_add_switch_and_remove_are_keyed_by_name():
    bank = CategoryBank(num_prompt_tokens=3, width=8)
    assert bank.names == [] and bank.active is None and len(bank) == 0
    with pytest.raises(CategoryError, match="no category is loaded"):
        bank.get()
    bottle = bank.add(_state("bottle"), torch.full((3, 8), 1.0))
    cable = bank.add(_state("cable", seed=1), torch.full((3, 8), 2.0), activate=False)
    assert bank.names == ["bottle", "cable"] and "cable" in bank and len(bank) == 2
    assert bank.active == "bottle" and bank.get() is bottle and bank.get("cable") is cable
    # each name has its own prompt vectors (PEFT adapters of one table)
    assert bank.prompt_tokens.adapter_names == ["bottle", "cable"]
    assert torch.equal(bank.vectors("bottle"), torch.full((3, 8), 1.0))
    assert torch.equal(bank.vectors("cable"), torch.full((3, 8), 2.0))
    bank.activate("cable")
    assert bank.active == "cable" and bank.get() is cable
    with pytest.raises(CategoryError, match=r"unknown category 'screw'; loaded categories: \['bottle', 'cable'\]"):
        bank.activate("screw")
    assert bank.active == "cable"  # a failed switch changes nothing
    bank.remove("cable")  # the active one: the next remaining becomes active
    assert bank.names == ["bottle"] and bank.active == "bottle" and bank.prompt_tokens.adapter_names == ["bottle"]
    bank.remove("bottle")
    assert bank.names == [] and bank.active is None and bank.prompt_tokens.adapter_names == []
    assert issubclass(CategoryError, AnomCLIPError) and issubclass(CategoryError, ValueError)


def test_adding_a_name_again_replaces_it():
    bank = CategoryBank(num_prompt_tokens=2, width=8)
    bank.add(_state("bottle", shots=2), torch.zeros(2, 8))
    replacement = bank.add(_state("bottle", shots=3, seed=4), torch.ones(2, 8))
    assert bank.names == ["bottle"] and bank.get("bottle") is replacement and bank.get().shots == 3
    assert torch.equal(bank.vectors("bottle"), torch.ones(2, 8))


def test_state_dict_and_to_see_every_tensor():
    bank = CategoryBank(num_prompt_tokens=3, width=8)
    bank.add(_state("bottle"), torch.randn(3, 8, generator=torch.Generator().manual_seed(1)))
    bank.get("bottle").prototypes = {"image": torch.randn(2, 6), "pixel": torch.randn(2, 6)}
    state = bank.state_dict()
    assert torch.equal(state["states.bottle.memory_0"], bank.get("bottle").memory_bank[0])
    assert {"states.bottle.prototype_image", "states.bottle.prototype_pixel"} <= set(state)
    assert torch.equal(state["prompt_tokens.token_embedding.trainable_tokens_delta.bottle"], bank.vectors("bottle"))
    bank.to(torch.float64)
    tensors = [*bank.get("bottle").memory_bank, *bank.get("bottle").prototypes.values(), bank.vectors("bottle")]
    assert all(t.dtype == torch.float64 for t in tensors)
    bank.to("meta")
    assert bank.device.type == "meta" and all(t.device.type == "meta" for t in
                                              [*bank.get("bottle").memory_bank, bank.vectors("bottle")])


def test_a_failed_load_leaves_the_bank_as_it_was():
    bank = CategoryBank(num_prompt_tokens=3, width=8)
    bank.add(_state("bottle"), torch.ones(3, 8))
    with pytest.raises(AdapterError, match="unexpected keys"):
        bank.load(_state("cable"), {"token_embedding.unknown_key": torch.zeros(3, 8)})
    assert bank.names == ["bottle"] and bank.active == "bottle" and bank.prompt_tokens.adapter_names == ["bottle"]


def test_the_model_owns_one_bank_and_keeps_its_public_names(tiny_model):
    generator = torch.Generator().manual_seed(0)
    tiny_model.add_category("bottle", reference_images=torch.randn(2, 3, 30, 30, generator=generator))
    tiny_model.add_category("cable", activate=False)
    assert isinstance(tiny_model.category_bank, CategoryBank)
    assert tiny_model.categories == tiny_model.category_bank.names == ["bottle", "cable"]  # a list of names
    assert tiny_model.active_category == tiny_model.category_bank.active == "bottle"
    tiny_model.set_category("cable")
    assert tiny_model.category_bank.active == "cable"
    assert tiny_model.prompt_parameters("cable")[0] is tiny_model.category_bank.vectors("cable")
    keys = set(tiny_model.state_dict())
    assert "category_bank.states.bottle.memory_0" in keys
    assert not [key for key in keys if key.startswith(("prompt_tokens.", "category_states."))]
