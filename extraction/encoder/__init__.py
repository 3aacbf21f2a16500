"""The encoder backend: a fine-tuned MiniLM (or any local BERT-style encoder) for the four tasks.

NER is word-level BIO token classification; usage status (UC) and relations (RE) are
classified from one pass per supplement with the supplement and every event marked; TE
follows from NER + RE; supplement names are normalised through the lexicon, then by the
nearest lexicon entry in embedding space.
"""
