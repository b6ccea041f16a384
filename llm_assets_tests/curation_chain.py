"""The curation chain's assets in materialisation order and a small English/Greek corpus, shared by the tests
that run the chain through Dagster."""

from __future__ import annotations

from llm_assets.defs.curation.assets import (
    curated_corpus,
    deduplicated_shards,
    normalized_shards,
    perplexity_scored_shards,
    pii_scrubbed_shards,
    quality_filtered_shards,
    reference_language_models,
)
from llm_assets.defs.ingestion.assets import raw_corpus

PER_SOURCE = [raw_corpus, normalized_shards, pii_scrubbed_shards]
GLOBAL = [
    deduplicated_shards,
    quality_filtered_shards,
    reference_language_models,
    perplexity_scored_shards,
    curated_corpus,
]
ENGLISH = [
    "The committee approved the annual budget after a long debate about public transport and schools.",
    "Citizens may submit their applications online or at the municipal office before the end of March.",
    "The new regulation requires every public body to publish its datasets in an open and reusable format.",
    "Hospitals in the region will receive additional funding for emergency services during the winter.",
    "The ministry announced a consultation on the draft law concerning the protection of personal data.",
    "Students who completed the programme received certificates from the regional education authority.",
]
GREEK = [
    "Η επιτροπή ενέκρινε τον ετήσιο προϋπολογισμό μετά από μακρά συζήτηση για τις δημόσιες συγκοινωνίες.",
    "Οι πολίτες μπορούν να υποβάλουν τις αιτήσεις τους ηλεκτρονικά ή στο δημοτικό κατάστημα έως τον Μάρτιο.",
    "Ο νέος κανονισμός υποχρεώνει κάθε δημόσιο φορέα να δημοσιεύει τα δεδομένα του σε ανοικτό μορφότυπο.",
    "Τα νοσοκομεία της περιφέρειας θα λάβουν πρόσθετη χρηματοδότηση για τις υπηρεσίες επειγόντων περιστατικών.",
    "Το υπουργείο ανακοίνωσε δημόσια διαβούλευση για το σχέδιο νόμου σχετικά με την προστασία δεδομένων.",
    "Οι φοιτητές που ολοκλήρωσαν το πρόγραμμα έλαβαν πιστοποιητικά από την περιφερειακή διεύθυνση εκπαίδευσης.",
]
