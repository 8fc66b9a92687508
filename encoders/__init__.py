"""Vision and speech encoders and discrete media tokenizers (``mmpretrain.encoders``)."""
